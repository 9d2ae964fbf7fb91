import numpy as np
import pytest
import torch

from models.uncertainty import STRATEGIES, backfill_order, interleave_random, score_uncertainty, scores_from_logits


def _logits_for(probs: np.ndarray) -> np.ndarray:
    return np.log(probs).astype(np.float32)


def test_orderings_on_constructed_probabilities() -> None:
    probs = np.array(
        [
            [0.98, 0.01, 0.01],  # confident
            [0.50, 0.49, 0.01],  # two-way tie: top margin uncertainty
            [0.40, 0.30, 0.30],  # lowest top-1, spread: top least-confidence and entropy
        ]
    )
    logits = torch.from_numpy(_logits_for(probs))
    least = scores_from_logits(logits, "least").numpy()
    margin = scores_from_logits(logits, "margin").numpy()
    entropy = scores_from_logits(logits, "entropy").numpy()
    np.testing.assert_allclose(least, 1 - probs.max(1), atol=1e-6)
    np.testing.assert_allclose(margin, [1 - 0.97, 1 - 0.01, 1 - 0.10], atol=1e-6)
    np.testing.assert_allclose(entropy, -(probs * np.log(probs)).sum(1), atol=1e-5)
    assert list(backfill_order(least)) == [2, 1, 0]
    assert list(backfill_order(margin)) == [1, 2, 0]
    assert list(backfill_order(entropy)) == [2, 1, 0]


def test_vectors_go_through_classifier_and_chunks_do_not_matter() -> None:
    rng = np.random.default_rng(0)
    v = rng.standard_normal((1003, 16)).astype(np.float32)
    w = rng.standard_normal((40, 16)).astype(np.float32)
    b = rng.standard_normal(40).astype(np.float32)
    for s in ("margin", "least", "entropy"):
        full = score_uncertainty(v, w, b, s, chunk=100000)
        chunked = score_uncertainty(v, w, b, s, chunk=7)
        ref = scores_from_logits(torch.from_numpy(v @ w.T + b), s).numpy()
        np.testing.assert_allclose(full, chunked, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(full, ref, atol=1e-4)
        assert full.dtype == np.float32 and full.shape == (1003,)


def test_random_is_seeded_and_a_permutation_source() -> None:
    v = np.zeros((50, 4), np.float32)
    w, b = np.zeros((3, 4), np.float32), np.zeros(3, np.float32)
    a = score_uncertainty(v, w, b, "random", seed=1)
    assert np.array_equal(a, score_uncertainty(v, w, b, "random", seed=1))
    assert not np.array_equal(a, score_uncertainty(v, w, b, "random", seed=2))
    assert sorted(backfill_order(a)) == list(range(50))


def test_bad_input_is_refused() -> None:
    v = np.zeros((5, 4), np.float32)
    with pytest.raises(ValueError, match="unknown ordering"):
        score_uncertainty(v, np.zeros((3, 4)), np.zeros(3), "bogus")
    with pytest.raises(ValueError, match="shape mismatch"):
        score_uncertainty(v, np.zeros((3, 5)), np.zeros(3), "margin")
    assert set(STRATEGIES) == {"margin", "least", "entropy", "random", "mixed"}


def test_memmap_input_streams(tmp_path) -> None:
    """A disk-backed array is read chunk by chunk (the path a 1M x 512 gallery takes)."""
    mm = np.lib.format.open_memmap(tmp_path / "v.npy", mode="w+", dtype=np.float32, shape=(2000, 8))
    mm[:] = np.random.default_rng(0).standard_normal((2000, 8))
    w = np.eye(8, dtype=np.float32)[:5]
    out = score_uncertainty(mm, w, np.zeros(5, np.float32), "entropy", chunk=300)
    ref = score_uncertainty(np.array(mm), w, np.zeros(5, np.float32), "entropy")
    np.testing.assert_allclose(out, ref, atol=1e-6)


class _VirtualVectors:
    """A (N, D) "array" that makes rows on demand and records the largest slice read: lets a test
    score a gallery far larger than it ever holds in memory."""

    def __init__(self, n: int, d: int) -> None:
        self.shape, self.ndim, self.max_rows = (n, d), 2, 0

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(self.shape[0])
        self.max_rows = max(self.max_rows, stop - start)
        return np.random.default_rng(start).standard_normal((stop - start, self.shape[1]), dtype=np.float32)


def test_large_gallery_is_streamed_in_bounded_chunks() -> None:
    v = _VirtualVectors(100_000, 8)
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((1000, 8)).astype(np.float32), np.zeros(1000, np.float32)
    out = score_uncertainty(v, w, b, "margin", chunk=4096)
    assert out.shape == (100_000,) and out.dtype == np.float32 and np.isfinite(out).all()
    assert v.max_rows == 4096  # never more than one chunk of vectors (and logits) at once


def test_mixed_takes_every_other_slot_from_a_random_order() -> None:
    n = 400
    pri = np.arange(n, dtype=np.float32)  # its own order: n-1, n-2, ..., 0
    order = backfill_order(interleave_random(pri, 0.5, seed=3))
    assert sorted(order.tolist()) == list(range(n))  # a permutation: nothing lost, nothing twice
    chance = np.random.default_rng(3).permutation(n)
    # the even slots follow the score order, skipping what the random slots took already
    taken: set[int] = set()
    for pos, item in enumerate(order.tolist()):
        if pos % 2 == 1:
            assert item == next(int(c) for c in chance if int(c) not in taken)
        else:
            assert item == max(set(range(n)) - taken)
        taken.add(item)
    # share 0 is the score order itself, share 1 the random permutation
    assert backfill_order(interleave_random(pri, 0.0)).tolist() == list(range(n - 1, -1, -1))
    assert backfill_order(interleave_random(pri, 1.0, seed=3)).tolist() == chance.tolist()
    with pytest.raises(ValueError):
        interleave_random(pri, 1.5)


def test_mixed_strategy_is_margin_interleaved_with_random() -> None:
    rng = np.random.default_rng(0)
    v, w, b = rng.standard_normal((300, 8)).astype(np.float32), rng.standard_normal((5, 8)), np.zeros(5)
    margin = score_uncertainty(v, w, b, "margin")
    mixed = score_uncertainty(v, w, b, "mixed", seed=7)
    assert np.array_equal(backfill_order(mixed), backfill_order(interleave_random(margin, 0.5, seed=7)))


def test_orderings_are_registered_once_and_the_default_follows_the_plan() -> None:
    from models.uncertainty import MIXED, Ordering, default_ordering, get_ordering, register_ordering

    with pytest.raises(ValueError, match="already registered"):
        register_ordering(Ordering("margin", "again"))
    assert get_ordering("random").uses_classifier is False and get_ordering("margin").uses_classifier
    assert default_ordering(wants_unbiased_prefix=False, classifier_usable=True) == "margin"
    assert default_ordering(wants_unbiased_prefix=True, classifier_usable=True) == MIXED.name == "mixed"
    assert default_ordering(wants_unbiased_prefix=True, classifier_usable=False) == "random"
