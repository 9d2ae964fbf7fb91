"""Backfill ordering: "the poor first" (paper Eq. 9-11).

Each OLD gallery vector goes through the NEW model's classifier (compatible spaces make that
meaningful); the less sure the new classifier is about an item, the earlier it is re-encoded.
Scores are computed chunk by chunk so the logits of a million items and thousands of classes
never exist at once; memory is O(chunk x classes).
"""

from __future__ import annotations

import numpy as np
import torch

STRATEGIES = ("margin", "least", "entropy", "random", "mixed")
MIXED_RANDOM_SHARE = 0.5  # of ``mixed``'s slots, those that take a uniformly drawn item


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
    """float32 (N,) priorities; ``random`` is a seeded uniform draw (the baseline order);
    ``mixed`` interleaves margin's order with a random one (:func:`interleave_random`)."""
    _check(old_vectors, w, b, strategy, chunk)
    n: int = old_vectors.shape[0]
    if strategy == "random":
        return np.random.default_rng(seed).random(n, dtype=np.float32)
    if strategy == "mixed":
        margin = score_uncertainty(old_vectors, w, b, "margin", chunk=chunk, seed=seed, device=device)
        return interleave_random(margin, MIXED_RANDOM_SHARE, seed=seed)
    out = np.empty(n, dtype=np.float32)
    wt = torch.as_tensor(np.asarray(w, dtype=np.float32), device=device).T.contiguous()
    bt = torch.as_tensor(np.asarray(b, dtype=np.float32), device=device)
    with torch.inference_mode():
        for i in range(0, n, chunk):
            v = torch.as_tensor(np.asarray(old_vectors[i : i + chunk], dtype=np.float32), device=device)
            logits = torch.addmm(bt, v, wt)
            out[i : i + len(v)] = scores_from_logits(logits, strategy).float().cpu().numpy()
    return out


def interleave_random(priorities: np.ndarray, share: float, *, seed: int = 0) -> np.ndarray:
    """Priorities whose order takes, at evenly spaced slots (``share`` of them), the next item of a
    seeded random permutation and elsewhere the next item of ``priorities``' own order.

    Why: the uncertainty orders were made for the paper's plan, which only needs the hardest items
    moved first. The ``transform`` plan fits T on the items moved so far, and a fit on the hardest
    items alone extrapolates badly to the rest; with half the slots random, every prefix of the
    backfill holds an unbiased sample of the gallery to fit on, and still half the hardest items.
    Returned as float32 ranks in (0, 1], highest first, so the queue's ZSET serves this order."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must lie in [0, 1], got {share}")
    n = len(priorities)
    by_score, by_chance = backfill_order(priorities), np.random.default_rng(seed).permutation(n)
    taken = np.zeros(n, bool)
    order = np.empty(n, np.int64)
    i = j = 0
    for pos in range(n):
        random_slot = int((pos + 1) * share) > int(pos * share)
        src, k = (by_chance, j) if random_slot else (by_score, i)
        while taken[src[k]]:
            k += 1
        order[pos] = src[k]
        taken[src[k]] = True
        if random_slot:
            j = k + 1
        else:
            i = k + 1
    rank = np.empty(n, np.float64)
    rank[order] = 1.0 - np.arange(n) / max(n, 1)
    return rank.astype(np.float32)


def backfill_order(priorities: np.ndarray) -> np.ndarray:
    """Indices in backfill order: highest priority first, ties broken by index (stable)."""
    return np.argsort(-np.asarray(priorities, dtype=np.float64), kind="stable")
