import numpy as np
import pytest

from models.metrics import average_precision, evaluate_scores, negative_flip_rate


def test_average_precision_hand_computed() -> None:
    # relevant at ranks 1, 3, 6 of 6: (1/1 + 2/3 + 3/6) / 3
    assert average_precision([1, 0, 1, 0, 0, 1]) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # @2: only rank 1 counts, divided by min(3, 2)
    assert average_precision([1, 0, 1, 0, 0, 1], k=2) == pytest.approx(0.5)
    assert average_precision([0, 0, 0]) == 0.0


def test_evaluate_scores_matches_hand_computed_map_and_top1() -> None:
    g_labels = np.array([0, 1, 0, 1])
    q_labels = np.array([0, 1])
    scores = np.array(
        [
            [0.9, 0.8, 0.1, 0.5],  # ranking g0(+), g1, g3, g2(+): AP = (1 + 2/4)/2 = 0.75
            [0.9, 0.1, 0.2, 0.3],  # ranking g0, g3(+), g2, g1(+): AP = (1/2 + 2/4)/2 = 0.5
        ]
    )
    r = evaluate_scores(scores, q_labels, g_labels)
    np.testing.assert_allclose(r.ap, [0.75, 0.5])
    assert r.map == pytest.approx(0.625)
    assert list(r.top1_correct) == [True, False] and r.top1 == 0.5
    r2 = evaluate_scores(scores, q_labels, g_labels, k=2)  # AP@2: (1)/2 and (1/2)/2
    np.testing.assert_allclose(r2.ap, [0.5, 0.25])


def test_evaluate_scores_agrees_with_reference_on_random_data() -> None:
    rng = np.random.default_rng(0)
    s = rng.standard_normal((37, 120))
    ql, gl = rng.integers(0, 5, 37), rng.integers(0, 5, 120)
    for k in (None, 10):
        r = evaluate_scores(s, ql, gl, k=k, chunk=8)
        ref = [
            average_precision(gl[np.argsort(-s[i])] == ql[i], k=k, n_relevant=int((gl == ql[i]).sum()))
            for i in range(37)
        ]
        np.testing.assert_allclose(r.ap, ref, atol=1e-6)


def test_negative_flip_rate_eq12() -> None:
    old = np.array([1, 1, 1, 1, 0, 0], bool)
    new = np.array([1, 0, 1, 0, 1, 0], bool)
    assert negative_flip_rate(old, new) == pytest.approx(2 / 4)  # the 0->1 gain does not offset
    assert negative_flip_rate(np.zeros(3, bool), np.ones(3, bool)) is None
    with pytest.raises(ValueError):
        negative_flip_rate(old, new[:3])


def test_top1_correct_is_evaluate_scores_top1_without_the_ranking() -> None:
    import torch

    from models.metrics import evaluate_scores, top1_correct

    rng = np.random.default_rng(11)
    scores = torch.from_numpy(rng.integers(0, 5, (60, 40)).astype(np.float32))  # many ties
    ql, gl = rng.integers(0, 3, 60), rng.integers(0, 3, 40)
    exclude = np.where(rng.random(60) < 0.5, rng.integers(0, 40, 60), -1)
    for ex in (None, exclude):
        ref = evaluate_scores(scores, ql, gl, exclude=ex).top1_correct
        assert np.array_equal(top1_correct(scores, ql, gl, exclude=ex), ref)
