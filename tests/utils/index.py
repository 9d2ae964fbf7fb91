"""Brute-force references and synthetic data for the mixed-index tests."""

from __future__ import annotations

import numpy as np

from service.index import Hit


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_topk_scores(queries: np.ndarray, vecs: np.ndarray, k: int) -> np.ndarray:
    """The k best inner products per query, sorted descending (ids left out: ties may order them
    either way)."""
    s = queries.astype(np.float64) @ vecs.astype(np.float64).T
    return -np.sort(-s, axis=1)[:, : min(k, vecs.shape[0])]


def assert_matches_brute(
    hits: list[list[Hit]],
    queries: np.ndarray,
    live: dict[int, tuple[str, np.ndarray]],
    k: int,
    atol: float = 1e-4,
) -> None:
    """Each result row has the brute-force top-k scores, each hit's score is its own vector's
    score and its model is the one the item is live in, and no id repeats."""
    ids = np.array(sorted(live))
    vecs = np.stack([live[i][1] for i in ids])
    expected = brute_topk_scores(queries, vecs, k)
    assert len(hits) == len(queries)
    for q, row, exp in zip(queries, hits, expected, strict=True):
        got_ids = [h.id for h in row]
        assert len(set(got_ids)) == len(got_ids), f"duplicate ids in {got_ids}"
        np.testing.assert_allclose([h.score for h in row], exp, atol=atol)
        for h in row:
            model, vec = live[h.id]
            assert h.model == model
            assert abs(float(q @ vec) - h.score) < atol
