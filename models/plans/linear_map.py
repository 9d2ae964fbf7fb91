"""T: a linear map from the old space to the new, fitted on the (old, new) vector pairs of the
items already backfilled.

T is applied on the query side: ``<q_new, g_old W> = <q_new W^T, g_old>``, so scoring old
vectors through T is one more query embedding against the old segment, not a transformed copy
of the segment (a refit costs O(pairs * D^2) once, nothing per gallery item). That identity
holds for the unnormalised map, which is what is fitted and served here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.plans.calibration import Scores

TRANSFORMS = ("lstsq", "procrustes")
DEFAULT_RIDGE = 1e-3
MIN_PAIRS = 32  # fewer pairs than this fit no transform: the plan stays on ``dual``'s scoring


@dataclass(frozen=True)
class LinearMap:
    """``T(x) = x @ weight``: old space (D_old) -> new space (D_new)."""

    weight: np.ndarray  # (D_old, D_new) float32
    kind: str
    pairs: int

    def apply(self, old: np.ndarray) -> np.ndarray:
        return np.asarray(old, np.float32) @ self.weight

    def query_side(self, q_new: Scores) -> Scores:
        """The query that scores old vectors as ``q_new`` scores their images under T (numpy in,
        numpy out: a replica's query; torch in, torch out: the evaluator's)."""
        if isinstance(q_new, torch.Tensor):
            return q_new @ torch.as_tensor(self.weight, device=q_new.device).T
        return np.asarray(q_new, np.float32) @ self.weight.T


def fit_transform(old: np.ndarray, new: np.ndarray, kind: str = "lstsq", ridge: float = DEFAULT_RIDGE) -> LinearMap:
    """T fitted on pairs (old vector, new vector) of the same items.

    ``lstsq``: ridge least squares ``argmin ||X W - Y||^2 + ridge * n * ||W||^2`` (any dimensions);
    ``procrustes``: the rotation ``U V^T`` of ``svd(X^T Y)`` (equal dimensions; keeps norms)."""
    x, y = np.asarray(old, np.float64), np.asarray(new, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"fit_transform needs paired (n, D) arrays, got {x.shape} and {y.shape}")
    if len(x) < MIN_PAIRS:
        raise ValueError(f"fit_transform needs at least {MIN_PAIRS} pairs, got {len(x)}")
    if kind == "lstsq":
        gram = x.T @ x + ridge * len(x) * np.eye(x.shape[1])
        w = np.linalg.solve(gram, x.T @ y)
    elif kind == "procrustes":
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"procrustes needs equal dimensions, got {x.shape[1]} and {y.shape[1]}")
        u, _, vt = np.linalg.svd(x.T @ y)
        w = u @ vt
    else:
        raise ValueError(f"unknown transform {kind!r}; choose from {', '.join(TRANSFORMS)}")
    return LinearMap(w.astype(np.float32), kind, len(x))
