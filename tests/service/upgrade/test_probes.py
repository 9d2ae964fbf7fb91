"""Leave-one-out evaluation (models.metrics.evaluate_scores(exclude=...)) against dropping the
query's own column by hand, on random data."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import evaluate_scores
from service.upgrade.probes import Gallery, ProbeSet, leave_one_out


@pytest.mark.parametrize("k", [None, 5])
def test_exclude_equals_dropping_the_column(k: int | None) -> None:
    rng = np.random.default_rng(3)
    g, q = 40, 12
    scores = rng.normal(size=(q, g)).astype(np.float32)
    gl = rng.integers(0, 4, size=g)
    cols = rng.choice(g, size=q, replace=False)
    ql = gl[cols]
    exclude = cols.copy()
    exclude[0] = -1  # a query that is not in the gallery
    got = evaluate_scores(scores, ql, gl, k=k, exclude=exclude)
    for r in range(q):
        keep = np.ones(g, bool)
        if exclude[r] >= 0:
            keep[exclude[r]] = False
        ref = evaluate_scores(scores[r][keep][None], ql[r : r + 1], gl[keep], k=k)
        assert got.ap[r] == pytest.approx(ref.ap[0], abs=1e-6)
        assert got.top1_correct[r] == ref.top1_correct[0]


def test_leave_one_out_never_finds_the_query_itself() -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(30, 8)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    labels = [str(i % 3) for i in range(30)]
    gallery = Gallery(np.arange(100, 130), vecs, labels, ["m"] * 30)
    # each query is exactly its own gallery vector: without leave-one-out top-1 would be trivial
    top1, ap = leave_one_out(vecs[:10], np.arange(100, 110), labels[:10], gallery, None)
    s = vecs[:10] @ vecs.T
    s[np.arange(10), np.arange(10)] = -np.inf
    nearest = s.argmax(1)
    assert top1.tolist() == [labels[j] == labels[i] for i, j in enumerate(nearest)]
    assert ((ap >= 0) & (ap <= 1)).all()


def test_probe_set_json_round_trip() -> None:
    p = ProbeSet(np.array([3, 5]), ["a", "b"], np.arange(8, dtype=np.float32).reshape(2, 4))
    back = ProbeSet.from_json(p.to_json())
    assert back.ids.tolist() == [3, 5] and back.labels == ["a", "b"]
    np.testing.assert_array_equal(back.queries, p.queries)
