"""Query plans over a mixed gallery, as mathematics shared by the offline evaluator and the service.

During an upgrade the gallery holds two kinds of items: those still on the old model (their old
vector) and those already backfilled (their new vector). A *plan* says how a query scores each
kind, so that one merged ranking comes out:

- ``paper``: the new model's query against every vector, raw scores (the paper's hot refresh;
  needs a backward-compatible new model of the same dimension);
- ``dual``: the old model's query against old vectors, the new model's query against new
  vectors, each space's scores calibrated onto one scale; flips nothing at the switch, and needs
  no compatibility at all (the spaces may differ in dimension);
- ``transform``: the new query against old vectors mapped into the new space by a linear map T
  fitted on the (old, new) vector pairs of the items already backfilled, new vectors as they are.

T is applied on the query side: ``<q_new, g_old W> = <q_new W^T, g_old>``, so scoring old vectors
through T is one more query embedding against the old segment, not a transformed copy of the
segment (a refit costs O(pairs * D^2) once, nothing per gallery item). That identity holds for
the unnormalised map, which is what is fitted and served here.

Calibration maps a raw dot product s of one space to ``(s - shift) / scale``: ``raw`` is (0, 1);
``zscore`` takes the mean and standard deviation of that space's scores between gallery items;
``spread`` keeps the exact match (s = 1 for unit vectors) at 0 in every space and divides by
that standard deviation, ``(s - 1) / std``: each space's ranking is spread alike, and an item's
own image still scores highest whichever space holds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PLANS = ("paper", "dual", "transform")
CALIBRATIONS = ("raw", "zscore", "spread")
TRANSFORMS = ("lstsq", "procrustes")
DEFAULT_RIDGE = 1e-3
MIN_PAIRS = 32  # fewer pairs than this fit no transform: the plan stays on ``dual``'s scoring


@dataclass(frozen=True)
class Calibration:
    shift: float = 0.0
    scale: float = 1.0

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        return (scores - self.shift) / self.scale

    def to_json(self) -> dict[str, float]:
        return {"shift": self.shift, "scale": self.scale}


RAW = Calibration()


def fit_zscore(vectors: np.ndarray, *, sample: int = 2000, seed: int = 0) -> Calibration:
    """Mean and standard deviation of the dot products between distinct items of one space."""
    v = np.asarray(vectors, np.float32)
    if len(v) < 2:
        return RAW
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(v), size=min(sample, len(v)), replace=False)
    s = v[pick] @ v[pick].T
    off = s[~np.eye(len(pick), dtype=bool)]
    std = float(off.std())
    return Calibration(float(off.mean()), std if std > 1e-8 else 1.0)


def fit_calibration(kind: str, vectors: np.ndarray, *, seed: int = 0) -> Calibration:
    if kind == "raw":
        return RAW
    if kind == "zscore":
        return fit_zscore(vectors, seed=seed)
    if kind == "spread":
        z = fit_zscore(vectors, seed=seed)
        return RAW if z == RAW else Calibration(1.0, z.scale)
    raise ValueError(f"unknown calibration {kind!r}; choose from {', '.join(CALIBRATIONS)}")


@dataclass(frozen=True)
class LinearMap:
    """``T(x) = x @ weight``: old space (D_old) -> new space (D_new)."""

    weight: np.ndarray  # (D_old, D_new) float32
    kind: str
    pairs: int

    def apply(self, old: np.ndarray) -> np.ndarray:
        return np.asarray(old, np.float32) @ self.weight

    def query_side(self, q_new: np.ndarray) -> np.ndarray:
        """The query that scores old vectors as ``q_new`` scores their images under T."""
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


@dataclass(frozen=True)
class PlanSpec:
    """One plan, fitted: its name, each space's calibration, and T for ``transform``."""

    name: str
    old: Calibration = RAW  # calibration of scores against old vectors
    new: Calibration = RAW  # ... against new vectors
    transform: LinearMap | None = None

    def __post_init__(self) -> None:
        if self.name not in PLANS:
            raise ValueError(f"unknown plan {self.name!r}; choose from {', '.join(PLANS)}")


def mixed_scores(
    spec: PlanSpec,
    q_old: torch.Tensor | None,
    q_new: torch.Tensor,
    g_old: torch.Tensor,
    g_new: torch.Tensor,
    backfilled: torch.Tensor,
) -> torch.Tensor:
    """(Q, G) scores of every query against the gallery mixed as ``backfilled`` (bool (G,)) says.

    ``g_old[j]`` is used for items not backfilled, ``g_new[j]`` for the others; a plan without T
    (``transform`` before enough pairs) scores old vectors as ``dual`` does."""
    if spec.name == "paper":
        if g_old.shape[1] != q_new.shape[1]:
            raise ValueError("the paper's plan compares the new query with old vectors: dimensions must agree")
        s_old = q_new @ g_old.T
    elif spec.name == "transform" and spec.transform is not None:
        w = torch.as_tensor(spec.transform.weight, device=q_new.device)
        s_old = (q_new @ w.T) @ g_old.T
    else:
        if q_old is None:
            raise ValueError(f"plan {spec.name!r} scores old vectors with the old model's query")
        s_old = q_old @ g_old.T
    s_old = spec.old.apply(s_old)
    s_new = spec.new.apply(q_new @ g_new.T)
    return torch.where(backfilled[None, :], s_new, s_old)


@dataclass(frozen=True)
class Candidate:
    plan: str
    map: float | None
    nfr: float | None


def choose(candidates: list[Candidate], nfr_target: float, safe: str = "dual") -> str:
    """The live chooser's rule: the candidate with the highest probe mAP whose probe NFR is within
    ``nfr_target``; when none is, the one with the lowest NFR (ties: the safe plan, then mAP).
    Candidates without a measurement are never chosen unless nothing else is there."""
    measured = [c for c in candidates if c.map is not None and not math.isnan(c.map)]
    if not measured:
        return safe

    def nfr(c: Candidate) -> float:
        return 0.0 if c.nfr is None or math.isnan(c.nfr) else c.nfr

    within = [c for c in measured if nfr(c) <= nfr_target + 1e-12]
    if within:
        return max(within, key=lambda c: (c.map or 0.0, c.plan == safe)).plan
    return min(measured, key=lambda c: (nfr(c), c.plan != safe, -(c.map or 0.0))).plan


def build_spec(
    plan: str,
    *,
    calibration: str = "raw",
    old_space: np.ndarray | None = None,
    new_space: np.ndarray | None = None,
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
    transform: str = "lstsq",
    seed: int = 0,
) -> PlanSpec:
    """Fit one plan from what a live upgrade has at a checkpoint: a sample of old vectors
    (``old_space``), new-model vectors (``new_space``: the probes' new embeddings, and the items
    backfilled so far), and the (old, new) pairs of backfilled items (``pairs``).

    ``paper`` is raw by definition. ``transform`` without ``MIN_PAIRS`` pairs scores old vectors as
    ``dual`` does; with T, the transformed old vectors are calibrated as new-space vectors are
    (they are meant to live there)."""
    if plan == "paper":
        return PlanSpec("paper")
    empty = np.zeros((0, 1), np.float32)
    old_cal = fit_calibration(calibration, old_space if old_space is not None else empty, seed=seed)
    new_cal = fit_calibration(calibration, new_space if new_space is not None else empty, seed=seed)
    if plan == "dual":
        return PlanSpec("dual", old_cal, new_cal)
    if plan != "transform":
        raise ValueError(f"unknown plan {plan!r}; choose from {', '.join(PLANS)}")
    if pairs is None or len(pairs[0]) < MIN_PAIRS:
        return PlanSpec("transform", old_cal, new_cal)
    t = fit_transform(pairs[0], pairs[1], transform)
    mapped = t.apply(old_space) if old_space is not None and len(old_space) else t.apply(pairs[0])
    return PlanSpec("transform", fit_calibration(calibration, mapped, seed=seed), new_cal, t)
