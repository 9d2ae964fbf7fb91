"""How one space's raw dot products are put on a scale shared with the other space's.

A calibration maps a raw dot product s of one space to ``(s - shift) / scale``, the one
convention from the fit to the index's merge (``service.index.SegmentQuery`` holds this type):
``raw`` is (0, 1); ``zscore`` takes the mean and standard deviation of that space's scores
between gallery items; ``spread`` keeps the exact match (s = 1 for unit vectors) at 0 in every
space and divides by that standard deviation, ``(s - 1) / std``: each space's ranking is spread
alike, and an item's own image still scores highest whichever space holds it; ``prob`` maps a
score to the log-odds that the two items share a label, a logistic curve fitted on labelled
pairs of that space (class-balanced, so the spaces' different label mixes do not shift it). The
logistic is monotone, so ranking by probability is ranking by its logit ``a * s + b``: an affine
map again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

CALIBRATIONS = ("raw", "zscore", "spread", "prob")

Scores = TypeVar("Scores", np.ndarray, torch.Tensor)


@dataclass(frozen=True)
class Calibration:
    shift: float = 0.0
    scale: float = 1.0

    def apply(self, scores: Scores) -> Scores:
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
