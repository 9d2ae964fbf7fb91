"""Coercion and checks of ids, vectors and queries, shared by every backend and the mixed index.

Done once at the boundary so the hot paths below can assume contiguous float32 / int64 arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from service.index.errors import DimensionError, DuplicateIdError, IndexInputError

MAX_K = 10_000


def as_ids(ids: Iterable[int] | np.ndarray, *, unique: bool = True) -> np.ndarray:
    """A 1-D int64 array of non-negative ids (``-1`` is FAISS's "no result"), unique by default."""
    arr = np.asarray(ids if isinstance(ids, np.ndarray) else list(ids))
    if arr.ndim != 1:
        raise IndexInputError(f"ids must be a 1-D sequence, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise IndexInputError(f"ids must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise IndexInputError("ids must be non-negative")
    if unique and np.unique(arr).size != arr.size:
        values, counts = np.unique(arr, return_counts=True)
        raise DuplicateIdError(f"ids must be unique within a batch; repeated: {values[counts > 1][:10].tolist()}")
    return np.ascontiguousarray(arr)


def new_rows(
    ids: Iterable[int] | np.ndarray, vecs: np.ndarray, dim: int, contains: Callable[[np.ndarray], np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (ids, vectors) for a backend's ``add``: ids unique and not yet stored there."""
    ids = as_ids(ids)
    vecs = as_vectors(vecs, len(ids), dim)
    present = contains(ids)
    if present.any():
        raise DuplicateIdError(f"ids already stored in this segment: {ids[present][:10].tolist()}")
    return ids, vecs


def as_vectors(vecs: np.ndarray, n: int, dim: int | None, what: str = "vectors") -> np.ndarray:
    """A C-contiguous float32 (n, dim) array of finite values."""
    arr = np.asarray(vecs)
    if arr.ndim == 1 and n == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise DimensionError(f"{what} must be a 2-D array (n, dim), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise IndexInputError(f"{what}: got {arr.shape[0]} rows for {n} ids")
    if dim is not None and arr.shape[1] != dim:
        raise DimensionError(f"{what} have dimension {arr.shape[1]}, the segment has dimension {dim}")
    if not np.issubdtype(arr.dtype, np.number):
        raise IndexInputError(f"{what} must be numeric, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.size and not np.isfinite(arr).all():
        raise IndexInputError(f"{what} contain NaN or infinite values")
    return arr


def as_queries(queries: np.ndarray, dim: int | None = None) -> np.ndarray:
    """Queries as (m, dim) float32; a single 1-D query becomes one row."""
    arr = np.asarray(queries)
    if arr.ndim == 1:
        arr = arr[None, :]
    return as_vectors(arr, arr.shape[0] if arr.ndim == 2 else -1, dim, what="queries")


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise IndexInputError(f"k must be an integer, got {k!r}")
    if not 1 <= int(k) <= MAX_K:
        raise IndexInputError(f"k must be between 1 and {MAX_K}, got {k}")
    return int(k)
