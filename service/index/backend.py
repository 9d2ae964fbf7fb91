"""The storage interface of one segment (one model's vectors), and how a backend is chosen.

A segment knows nothing of models or rollback: it stores float32 vectors under explicit int64
ids and answers exact (or, for IVF, approximate) inner-product top-k. The mixed index composes
segments; the backends differ only in where the vectors live and how they are searched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from service.index.errors import IndexInputError

if TYPE_CHECKING:
    from service.settings import Settings

BackendKind = Literal["auto", "flat", "ivf", "gpu"]
BACKEND_KINDS: tuple[str, ...] = ("auto", "flat", "ivf", "gpu")


@runtime_checkable
class VectorBackend(Protocol):
    """One segment's vectors. Not thread-safe by itself: the mixed index serialises writers."""

    kind: str
    dim: int

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Append vectors under new ids; raises ``DuplicateIdError`` for an id already stored."""

    def remove(self, ids: np.ndarray) -> np.ndarray:
        """Remove the ids and return their vectors (rows in the order of ``ids``), O(B·D)."""

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Boolean mask: which of ``ids`` are stored here."""

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors of ``ids`` (a copy); raises ``UnknownIdError`` for a missing id."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: (scores float32 (m, k'), ids int64 (m, k')), k' = min(k, count).

        An id of -1 (score -inf) marks "no result", which IVF can return when the probed lists
        hold fewer than k vectors."""

    def count(self) -> int: ...

    def ids(self) -> np.ndarray:
        """All stored ids (a copy), in storage order."""

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) of everything stored, as host numpy arrays, for snapshots and reloads."""

    def save(self, directory: Path, stem: str) -> dict[str, str]:
        """Write this segment under ``directory`` (files named from ``stem``, each written to a
        temporary file and ``os.replace``d); return the file names to record in a manifest."""

    def load(self, directory: Path, files: dict[str, str]) -> None:
        """Fill an empty backend from files written by ``save`` (of this or any other backend)."""


BackendFactory = Callable[[int], VectorBackend]


def cuda_available() -> bool:
    """True when torch can see a CUDA device. torch is imported lazily: the CPU backends need
    only numpy and FAISS."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a project dependency
        return False
    return bool(torch.cuda.is_available())


def resolve_kind(kind: str, device: str = "auto") -> str:
    """Turn ``auto`` into a concrete backend: the GPU one when CUDA is visible (and the device
    setting allows it), else the exact CPU flat one."""
    if kind not in BACKEND_KINDS:
        raise IndexInputError(f"unknown index backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")
    if kind == "auto":
        return "gpu" if device != "cpu" and cuda_available() else "flat"
    if kind == "gpu" and device == "cpu":
        raise IndexInputError("index backend 'gpu' contradicts device 'cpu'")
    if kind == "gpu" and not cuda_available():
        raise IndexInputError("index backend 'gpu' needs a CUDA device visible to torch; none is")
    return kind


def create_backend(kind: str, dim: int, **options: Any) -> VectorBackend:
    """One empty segment of the given kind. Options: ``nlist``, ``nprobe``, ``train_size`` (ivf),
    ``device`` (gpu: a torch device, default ``cuda``; ``auto``: ``cpu`` forbids the GPU)."""
    if not isinstance(dim, int | np.integer) or dim < 1:
        raise IndexInputError(f"dimension must be a positive integer, got {dim!r}")
    device = options.pop("device", "auto")
    concrete = resolve_kind(kind, device)
    if concrete == "flat":
        from service.index.flat import FlatBackend

        return FlatBackend(int(dim))
    if concrete == "ivf":
        from service.index.ivf import IVFBackend

        return IVFBackend(int(dim), **options)
    from service.index.torch_backend import TorchBackend

    return TorchBackend(int(dim), device="cuda" if device == "auto" else device)


def backend_factory(kind: str = "auto", **options: Any) -> BackendFactory:
    """A factory of empty segments, with ``auto`` resolved once so every segment agrees."""
    device = options.get("device", "auto")
    concrete = resolve_kind(kind, device)
    opts = {k: v for k, v in options.items() if k != "device"}
    if concrete == "gpu":
        opts["device"] = "cuda" if device == "auto" else device

    def make(dim: int) -> VectorBackend:
        return create_backend(concrete, dim, **opts)

    make.kind = concrete  # type: ignore[attr-defined]
    return make


def factory_from_settings(settings: Settings) -> BackendFactory:
    """The factory that ``HOTREFRESH_INDEX_BACKEND``, ``_IVF_NLIST``, ``_IVF_NPROBE`` and
    ``_DEVICE`` describe."""
    kind = settings.index_backend
    opts: dict[str, Any] = {"device": settings.device}
    if kind == "ivf":
        opts.update(nlist=settings.ivf_nlist, nprobe=settings.ivf_nprobe)
    return backend_factory(kind, **opts)
