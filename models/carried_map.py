"""The old->new map a new model carries from its training: what a vector-only upgrade maps the
gallery with, without reading a gallery image (docs/workers.md, "Upgrades without images").

Why fitted at training time: a map needs (old vector, new vector) pairs of the same images, and
the one moment both models and a set of images are at hand without touching the gallery is the
new model's training (``hotrefresh train --old``: the old model is loaded for the compatibility
loss anyway). The map is the ``transform`` plan's (``models.plans.linear_map``: ridge least
squares by default), fitted on up to :data:`CARRY_PAIRS` training images and kept in the
checkpoint's metadata (``extra["old_map"]``), so it travels with the checkpoint into the model
registry with no file or table of its own. It names the old model by name *and* content hash: a
map is only valid against the exact weights whose vectors it was fitted on.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from models.plans.linear_map import MIN_PAIRS, TRANSFORMS, LinearMap, fit_transform

KEY = "old_map"  # in ModelMeta.extra
CARRY_PAIRS = 4096  # training images the carried map is fitted on (a seeded sample)
MAX_WEIGHT_VALUES = 65_536 * 64  # far above any map here, far below a memory problem


class CarriedMapError(ValueError):
    """A carried map that cannot be used, with the reason in the message."""


def weight_to_b64(weight: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(weight, "<f4").tobytes()).decode()


def weight_from_b64(raw: str, shape: tuple[int, int]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(raw), "<f4").astype(np.float32).reshape(shape)


@dataclass(frozen=True)
class CarriedMap:
    """T: ``from_model``'s space (the exact weights ``from_hash``) -> the carrying model's."""

    from_model: str
    from_hash: str
    map: LinearMap

    def to_dict(self) -> dict[str, Any]:
        rows, cols = self.map.weight.shape
        return {
            "from_model": self.from_model,
            "from_hash": self.from_hash,
            "kind": self.map.kind,
            "pairs": self.map.pairs,
            "shape": [int(rows), int(cols)],
            "weight_b64": weight_to_b64(self.map.weight),
        }

    @classmethod
    def from_dict(cls, d: object) -> CarriedMap:
        """Every field checked: a bad map is a :class:`CarriedMapError`, never a crash later."""
        if not isinstance(d, dict):
            raise CarriedMapError(f"{KEY} must be an object, got {type(d).__name__}")
        try:
            shape = d["shape"]
            rows, cols = (int(v) for v in shape)
            if len(shape) != 2 or rows < 1 or cols < 1 or rows * cols > MAX_WEIGHT_VALUES:
                raise ValueError(f"bad shape {shape!r}")
            if d["kind"] not in TRANSFORMS:
                raise ValueError(f"unknown kind {d['kind']!r}")
            weight = weight_from_b64(str(d["weight_b64"]), (rows, cols))
            if not np.isfinite(weight).all():
                raise ValueError("weights are not finite")
            return cls(str(d["from_model"]), str(d["from_hash"]), LinearMap(weight, str(d["kind"]), int(d["pairs"])))
        except (KeyError, TypeError, ValueError) as e:
            raise CarriedMapError(f"{KEY} is not a usable map: {e}") from None


def carried_map(extra: dict[str, Any] | None) -> CarriedMap | None:
    """The map a model's metadata carries (``ModelMeta.extra``), or None."""
    if not extra or KEY not in extra:
        return None
    return CarriedMap.from_dict(extra[KEY])


class Embedder(Protocol):
    def embed_tensor(self, x: np.ndarray) -> np.ndarray: ...


def fit_carried_map(
    old: Embedder,
    new: Embedder,
    images: np.ndarray,
    *,
    from_model: str,
    from_hash: str,
    kind: str = "lstsq",
    pairs: int = CARRY_PAIRS,
    seed: int = 0,
) -> CarriedMap | None:
    """Fit T on a seeded sample of ``images`` (uint8, (n,H,W) or (n,C,H,W)) encoded by both
    models; None with fewer than ``MIN_PAIRS`` images."""
    if len(images) < MIN_PAIRS:
        return None
    take = np.sort(np.random.default_rng(seed).choice(len(images), min(pairs, len(images)), replace=False))
    sample = np.ascontiguousarray(images[take])
    return CarriedMap(from_model, from_hash, fit_transform(old.embed_tensor(sample), new.embed_tensor(sample), kind))
