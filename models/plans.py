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
  fitted on the (old, new) vector pairs of the items already backfilled, new vectors as they are;
- ``blend``: an item not yet backfilled scores the mean of what ``dual`` and ``transform`` give it
  (the old query's calibrated score and the transformed new query's), new vectors as they are.
  Both terms are linear in the old vector, so the old segment is still searched with one query,
  ``q_old / scale_old + (q_new W^T) / scale_T`` (halved), and one shift: no extra search.

T is applied on the query side: ``<q_new, g_old W> = <q_new W^T, g_old>``, so scoring old vectors
through T is one more query embedding against the old segment, not a transformed copy of the
segment (a refit costs O(pairs * D^2) once, nothing per gallery item). That identity holds for
the unnormalised map, which is what is fitted and served here.

Calibration maps a raw dot product s of one space to ``(s - shift) / scale``: ``raw`` is (0, 1);
``zscore`` takes the mean and standard deviation of that space's scores between gallery items;
``spread`` keeps the exact match (s = 1 for unit vectors) at 0 in every space and divides by
that standard deviation, ``(s - 1) / std``: each space's ranking is spread alike, and an item's
own image still scores highest whichever space holds it; ``prob`` maps a score to the log-odds
that the two items share a label, a logistic curve fitted on labelled pairs of that space
(class-balanced, so the spaces' different label mixes do not shift it). The logistic is
monotone, so ranking by probability is ranking by its logit ``a * s + b``: an affine map again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

PLANS = ("paper", "dual", "transform", "blend")
CALIBRATIONS = ("raw", "zscore", "spread", "prob")
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


def fit_match_probability(
    vectors: np.ndarray, labels: np.ndarray | None, *, sample: int = 2000, seed: int = 0, iters: int = 30
) -> Calibration | None:
    """``logit P(same label | s) = a * s + b`` by Newton's method on the labelled pairs of a seeded
    sample (labels < 0 are unlabelled); None when the pairs cannot fit it (no labels, one class,
    or a curve that does not rise with the score)."""
    if labels is None or len(vectors) < 2:
        return None
    v, lab = np.asarray(vectors, np.float32), np.asarray(labels)
    keep = np.flatnonzero(lab >= 0)
    if len(keep) < 2:
        return None
    rng = np.random.default_rng(seed)
    pick = rng.choice(keep, size=min(sample, len(keep)), replace=False)
    s = v[pick] @ v[pick].T
    iu = np.triu_indices(len(pick), k=1)
    x, y = s[iu].astype(np.float64), (lab[pick][:, None] == lab[pick][None, :])[iu].astype(np.float64)
    n_pos = y.sum()
    if n_pos == 0 or n_pos == len(y):
        return None
    wt = np.where(y > 0, 0.5 / n_pos, 0.5 / (len(y) - n_pos))  # each class weighs one half
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        r, h = wt * (p - y), wt * p * (1.0 - p)
        grad = np.array([(r * x).sum(), r.sum()])
        hess = np.array([[(h * x * x).sum(), (h * x).sum()], [(h * x).sum(), h.sum()]]) + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    if not (np.isfinite(a) and np.isfinite(b)) or a <= 1e-6:
        return None
    return Calibration(float(-b / a), float(1.0 / a))


def fit_calibration(kind: str, vectors: np.ndarray, *, labels: np.ndarray | None = None, seed: int = 0) -> Calibration:
    """One space's calibration; ``prob`` without labels to fit on falls back to ``zscore``."""
    if kind == "raw":
        return RAW
    if kind == "zscore":
        return fit_zscore(vectors, seed=seed)
    if kind == "spread":
        z = fit_zscore(vectors, seed=seed)
        return RAW if z == RAW else Calibration(1.0, z.scale)
    if kind == "prob":
        fitted = fit_match_probability(vectors, labels, seed=seed)
        return fitted if fitted is not None else fit_zscore(vectors, seed=seed)
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
    """One plan, fitted: its name, each space's calibration, and T for ``transform`` and ``blend``."""

    name: str
    old: Calibration = RAW  # calibration of scores against old vectors (transform: of the T-query's)
    new: Calibration = RAW  # ... against new vectors
    transform: LinearMap | None = None
    mapped: Calibration = RAW  # blend: calibration of the T-query's scores (``old`` is the old query's)

    def old_queries(self, q_old: np.ndarray | None, q_new: np.ndarray) -> tuple[np.ndarray, Calibration]:
        """The one query that scores old vectors under this plan, and its calibration, as numpy:
        what a replica sends to the old segment (``mixed_scores`` is the same in torch)."""
        if self.name == "paper":
            return np.asarray(q_new, np.float32), self.old
        if self.name == "transform" and self.transform is not None:
            return self.transform.query_side(q_new), self.old
        if q_old is None:
            raise ValueError(f"plan {self.name!r} scores old vectors with the old model's query")
        if self.name == "blend" and self.transform is not None:
            a, b = self.old, self.mapped
            q = 0.5 * (np.asarray(q_old, np.float32) / a.scale + self.transform.query_side(q_new) / b.scale)
            return q.astype(np.float32), Calibration(0.5 * (a.shift / a.scale + b.shift / b.scale), 1.0)
        return np.asarray(q_old, np.float32), self.old

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
    elif spec.name == "blend" and spec.transform is not None:
        if q_old is None:
            raise ValueError("plan 'blend' scores old vectors with the old model's query too")
        w = torch.as_tensor(spec.transform.weight, device=q_new.device)
        s_t = spec.mapped.apply((q_new @ w.T) @ g_old.T)
        s_new = spec.new.apply(q_new @ g_new.T)
        return torch.where(backfilled[None, :], s_new, 0.5 * (spec.old.apply(q_old @ g_old.T) + s_t))
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


NFR_SLACK = 0.01  # the relative target: the finished upgrade's NFR@1 (estimated) plus one point


def estimate_final_nfr(
    p_old: np.ndarray,
    p_new: np.ndarray,
    p_labels: np.ndarray,
    s_old: np.ndarray,
    s_new: np.ndarray,
    s_labels: np.ndarray,
) -> float | None:
    """NFR@1 the finished upgrade will have, estimated from what exists at a checkpoint: the
    probes (old and new embeddings of gallery items, ``p_*``) and items already backfilled (their
    old and new vectors, ``s_*``, probes excluded). The probes search that sub-gallery leave-one-
    out once in the old space and once in the new; their flips are the estimate (the sub-gallery
    grows to the whole gallery at 100%, where it is exact). None without labelled probes."""
    from models.metrics import negative_flip_rate, top1_correct

    labels = np.asarray(p_labels)
    if len(labels) < 2 or not (labels >= 0).any():
        return None
    g_labels = np.concatenate([labels, np.asarray(s_labels)])
    exclude = np.arange(len(labels), dtype=np.int64)
    hits = []
    for q, s_part in ((p_old, s_old), (p_new, s_new)):
        q = np.asarray(q, np.float32)
        g = np.concatenate([q, np.asarray(s_part, np.float32).reshape(-1, q.shape[1])])
        hits.append(top1_correct(torch.from_numpy(q @ g.T), labels, g_labels, exclude=exclude))
    return negative_flip_rate(hits[0], hits[1])


def nfr_bound(nfr_target: float | None, estimated_final: float | None) -> float:
    """The probe NFR@1 a plan may reach under ``auto``: the user's absolute ``nfr_target`` when
    one is set; else the finished upgrade's estimated NFR plus one point (``NFR_SLACK``), i.e.
    flip no more of the old system's answers mid-way than the finished upgrade will. Without
    an estimate, 5%."""
    if nfr_target is not None:
        return nfr_target
    return 0.05 if estimated_final is None else estimated_final + NFR_SLACK


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
    old_labels: np.ndarray | None = None,
    new_labels: np.ndarray | None = None,
) -> PlanSpec:
    """Fit one plan from what a live upgrade has at a checkpoint: a sample of old vectors
    (``old_space``), new-model vectors (``new_space``: the probes' new embeddings, and the items
    backfilled so far), and the (old, new) pairs of backfilled items (``pairs``). The label codes
    of each space's rows (``old_labels``, ``new_labels``; -1 unlabelled) serve ``prob`` only.

    ``paper`` is raw by definition. ``transform`` and ``blend`` without ``MIN_PAIRS`` pairs score
    old vectors as ``dual`` does; with T, the transformed old vectors are calibrated as a space
    of their own (their scores are spread unlike the new vectors' they approximate)."""
    if plan == "paper":
        return PlanSpec("paper")
    empty = np.zeros((0, 1), np.float32)
    old_cal = fit_calibration(calibration, old_space if old_space is not None else empty, labels=old_labels, seed=seed)
    new_cal = fit_calibration(calibration, new_space if new_space is not None else empty, labels=new_labels, seed=seed)
    if plan == "dual":
        return PlanSpec("dual", old_cal, new_cal)
    if plan not in ("transform", "blend"):
        raise ValueError(f"unknown plan {plan!r}; choose from {', '.join(PLANS)}")
    if pairs is None or len(pairs[0]) < MIN_PAIRS:
        return PlanSpec(plan, old_cal, new_cal)
    t = fit_transform(pairs[0], pairs[1], transform)
    if old_space is not None and len(old_space):
        mapped, mapped_labels = t.apply(old_space), old_labels
    else:
        mapped, mapped_labels = t.apply(pairs[0]), None
    mapped_cal = fit_calibration(calibration, mapped, labels=mapped_labels, seed=seed)
    if plan == "blend":
        return PlanSpec("blend", old_cal, new_cal, t, mapped_cal)
    return PlanSpec("transform", mapped_cal, new_cal, t)
