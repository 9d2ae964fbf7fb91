"""Backfill ordering: "the poor first" (paper Eq. 9-11).

Each OLD gallery vector goes through the NEW model's classifier (compatible spaces make that
meaningful); the less sure the new classifier is about an item, the earlier it is re-encoded.
Scores are computed chunk by chunk so the logits of a million items and thousands of classes
never exist at once; memory is O(chunk x classes).
"""

from __future__ import annotations

import numpy as np
import torch

STRATEGIES = ("margin", "least", "entropy", "random")


def _check(old_vectors: np.ndarray, w: np.ndarray, b: np.ndarray, strategy: str, chunk: int) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown ordering strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if old_vectors.ndim != 2 or w.ndim != 2 or b.ndim != 1:
        raise ValueError("expected old_vectors (N, D), W (C, D) and b (C,)")
    # random never puts a vector through the classifier, so any new model (any dimension) will do
    if (strategy != "random" and old_vectors.shape[1] != w.shape[1]) or w.shape[0] != b.shape[0]:
        raise ValueError(
            f"shape mismatch: vectors have D={old_vectors.shape[1]}, classifier W is {w.shape}, b is {b.shape}"
        )


def scores_from_logits(logits: torch.Tensor, strategy: str) -> torch.Tensor:
    """Uncertainty of each row of logits; higher = backfill first.

    Written around the log-partition ``lse`` so least confidence and margin never build the full
    probability matrix: p_i = exp(l_i - lse). Entropy uses H = lse - sum(p * l).
    """
    lse = torch.logsumexp(logits, dim=1)
    if strategy == "least":
        return 1.0 - torch.exp(logits.amax(dim=1) - lse)
    if strategy == "margin":
        if logits.shape[1] < 2:
            return 1.0 - torch.exp(logits[:, 0] - lse)
        top2 = logits.topk(2, dim=1).values
        return 1.0 - (torch.exp(top2[:, 0] - lse) - torch.exp(top2[:, 1] - lse))
    if strategy == "entropy":
        p = torch.exp(logits - lse[:, None])
        return lse - (p * logits).sum(dim=1)
    raise ValueError(f"strategy {strategy!r} has no logits-based score")


def score_uncertainty(
    old_vectors: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    strategy: str,
    *,
    chunk: int = 65536,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """float32 (N,) priorities; ``random`` is a seeded uniform draw (the baseline order)."""
    _check(old_vectors, w, b, strategy, chunk)
    n: int = old_vectors.shape[0]
    if strategy == "random":
        return np.random.default_rng(seed).random(n, dtype=np.float32)
    out = np.empty(n, dtype=np.float32)
    wt = torch.as_tensor(np.asarray(w, dtype=np.float32), device=device).T.contiguous()
    bt = torch.as_tensor(np.asarray(b, dtype=np.float32), device=device)
    with torch.inference_mode():
        for i in range(0, n, chunk):
            v = torch.as_tensor(np.asarray(old_vectors[i : i + chunk], dtype=np.float32), device=device)
            logits = torch.addmm(bt, v, wt)
            out[i : i + len(v)] = scores_from_logits(logits, strategy).float().cpu().numpy()
    return out


def backfill_order(priorities: np.ndarray) -> np.ndarray:
    """Indices in backfill order: highest priority first, ties broken by index (stable)."""
    return np.argsort(-np.asarray(priorities, dtype=np.float64), kind="stable")
