"""Backfill ordering: "the poor first" (paper Eq. 9-11).

Each OLD gallery vector goes through the NEW model's classifier (compatible spaces make that
meaningful); the less sure the new classifier is about an item, the earlier it is re-encoded.
Scores are computed chunk by chunk so the logits of a million items and thousands of classes
never exist at once; memory is O(chunk x classes).

Each ordering is one :class:`Ordering`, registered once (:func:`register_ordering` refuses a
second of one name); the HTTP schema, the CLI, the service's default and the evaluator read the
registry. A new ordering is one :func:`register_ordering` call and its test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

MIXED_RANDOM_SHARE = 0.5  # of ``mixed``'s slots, those that take a uniformly drawn item


@dataclass(frozen=True)
class Ordering:
    """A backfill order. ``logits_score`` (higher = backfill first) makes it a classifier order:
    every old vector is scored chunk by chunk through the new classifier. Otherwise
    ``priorities(old_vectors, w, b, seed, chunk, device)`` gives the (N,) priorities whole;
    ``uses_classifier`` False lets it take any new model (another dimension, no head)."""

    name: str
    summary: str
    logits_score: Callable[[torch.Tensor], torch.Tensor] | None = None
    priorities: Callable[..., np.ndarray] | None = None
    uses_classifier: bool = True
    line_style: str = "-"  # the evaluator's plot


_ORDERINGS: dict[str, Ordering] = {}


def register_ordering(ordering: Ordering) -> Ordering:
    if not ordering.name or ordering.name in _ORDERINGS:
        raise ValueError(f"ordering {ordering.name!r} is empty or already registered")
    _ORDERINGS[ordering.name] = ordering
    return ordering


def get_ordering(name: str) -> Ordering:
    try:
        return _ORDERINGS[name]
    except KeyError:
        raise ValueError(f"unknown ordering strategy {name!r}; choose one of {', '.join(_ORDERINGS)}") from None


def ordering_names() -> tuple[str, ...]:
    return tuple(_ORDERINGS)


def without_classifier() -> tuple[str, ...]:
    """The orderings any new model can take (another dimension, no classifier head)."""
    return tuple(o.name for o in _ORDERINGS.values() if not o.uses_classifier)


def describe() -> str:
    return "; ".join(f"{o.name} ({o.summary})" for o in _ORDERINGS.values())


def _check(old_vectors: np.ndarray, w: np.ndarray, b: np.ndarray, strategy: str, chunk: int) -> None:
    uses_classifier = get_ordering(strategy).uses_classifier
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if old_vectors.ndim != 2 or w.ndim != 2 or b.ndim != 1:
        raise ValueError("expected old_vectors (N, D), W (C, D) and b (C,)")
    # an order without the classifier takes any new model (any dimension)
    if (uses_classifier and old_vectors.shape[1] != w.shape[1]) or w.shape[0] != b.shape[0]:
        raise ValueError(
            f"shape mismatch: vectors have D={old_vectors.shape[1]}, classifier W is {w.shape}, b is {b.shape}"
        )


def _least(logits: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.exp(logits.amax(dim=1) - torch.logsumexp(logits, dim=1))


def _margin(logits: torch.Tensor) -> torch.Tensor:
    lse = torch.logsumexp(logits, dim=1)
    if logits.shape[1] < 2:
        return 1.0 - torch.exp(logits[:, 0] - lse)
    top2 = logits.topk(2, dim=1).values
    return 1.0 - (torch.exp(top2[:, 0] - lse) - torch.exp(top2[:, 1] - lse))


def _entropy(logits: torch.Tensor) -> torch.Tensor:
    lse = torch.logsumexp(logits, dim=1)
    p = torch.exp(logits - lse[:, None])
    return lse - (p * logits).sum(dim=1)


Device = str | torch.device


def _uniform(
    old_vectors: np.ndarray, w: np.ndarray, b: np.ndarray, *, seed: int, chunk: int, device: Device
) -> np.ndarray:
    n: int = old_vectors.shape[0]
    return np.random.default_rng(seed).random(n, dtype=np.float32)


def _mixed(
    old_vectors: np.ndarray, w: np.ndarray, b: np.ndarray, *, seed: int, chunk: int, device: Device
) -> np.ndarray:
    margin = score_uncertainty(old_vectors, w, b, MARGIN.name, chunk=chunk, seed=seed, device=device)
    return interleave_random(margin, MIXED_RANDOM_SHARE, seed=seed)


# Written around the log-partition ``lse`` so least confidence and margin never build the full
# probability matrix: p_i = exp(l_i - lse). Entropy uses H = lse - sum(p * l).
MARGIN = register_ordering(
    Ordering("margin", "1 - (p1 - p2) of the new classifier: the paper's", _margin, line_style="--")
)
register_ordering(Ordering("least", "1 - p1 of the new classifier", _least, line_style=":"))
register_ordering(Ordering("entropy", "entropy of the new classifier's softmax", _entropy, line_style="-."))
RANDOM = register_ordering(
    Ordering("random", "a seeded uniform order, no classifier", priorities=_uniform, uses_classifier=False)
)
MIXED = register_ordering(Ordering("mixed", "margin's order with every other slot random", priorities=_mixed))
PAPER_ORDERINGS = (MARGIN.name, "least", "entropy", RANDOM.name)  # the paper's four (Table 2)


def default_ordering(wants_unbiased_prefix: bool, classifier_usable: bool) -> str:
    """The order an upgrade takes when none is asked for, as measured (README, "Query plans"):
    ``margin`` (the paper's) for a plan that only needs the hardest items moved first; ``mixed``
    for plans that fit on the items moved so far, where half the slots drawn at random keep that
    fit unbiased and lower the NFR at every step; ``random`` when the new model's classifier
    cannot score old vectors (another dimension, or no head)."""
    if not classifier_usable:
        return RANDOM.name
    return MIXED.name if wants_unbiased_prefix else MARGIN.name


STRATEGIES = ordering_names()  # the built-in orderings, as registered above


def scores_from_logits(logits: torch.Tensor, strategy: str) -> torch.Tensor:
    """Uncertainty of each row of logits; higher = backfill first."""
    score = get_ordering(strategy).logits_score
    if score is None:
        raise ValueError(f"strategy {strategy!r} has no logits-based score")
    return score(logits)


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
    ordering = get_ordering(strategy)
    if ordering.priorities is not None:
        return ordering.priorities(old_vectors, w, b, seed=seed, chunk=chunk, device=device)
    if ordering.logits_score is None:
        raise ValueError(f"ordering {strategy!r} defines no score")
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
