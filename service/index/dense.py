"""Bookkeeping shared by the dense backends (CPU numpy, torch/CUDA): a contiguous buffer of rows,
a row -> id array and an id -> row map.

Removal fills each hole with one of the last rows ("swap-compaction"), so the live rows are
always ``[0, n)`` and search scans one dense block: no tombstones to filter, no rebuilds, and
an add or remove of B rows costs O(B·D) whatever N is. Storage order is not insertion order,
which nothing relies on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from service.index.errors import DuplicateIdError, UnknownIdError
from service.index.files import load_arrays, save_arrays
from service.index.validation import as_ids, as_vectors, new_rows

MIN_CAPACITY = 1024
GROWTH = 1.5


class DenseBackend(ABC):
    kind = "dense"

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._n = 0
        self._row_ids = np.empty(0, dtype=np.int64)
        self._slot: dict[int, int] = {}
        self._storage: Any = self._alloc(0)

    # --- storage primitives of the concrete backend ---------------------------------------
    @abstractmethod
    def _alloc(self, capacity: int) -> Any: ...

    @abstractmethod
    def _copy_prefix(self, src: Any, dst: Any, n: int) -> None: ...

    @abstractmethod
    def _write_rows(self, start: int, vecs: np.ndarray) -> None: ...

    @abstractmethod
    def _gather(self, slots: np.ndarray) -> np.ndarray:
        """Rows at ``slots`` as a host float32 array (a copy)."""

    @abstractmethod
    def _move_rows(self, dst: np.ndarray, src: np.ndarray) -> None:
        """storage[dst] = storage[src] (disjoint sets of rows)."""

    @abstractmethod
    def _search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over rows [0, n): (scores (m, k), row numbers (m, k)) as host arrays."""

    # --- the VectorBackend interface -------------------------------------------------------
    def capacity(self) -> int:
        return len(self._row_ids)

    def reserve(self, capacity: int) -> None:
        """Grow the buffer once up front (the only O(N) step, amortised away by ``GROWTH``)."""
        if capacity <= self.capacity():
            return
        storage = self._alloc(capacity)
        self._copy_prefix(self._storage, storage, self._n)
        row_ids = np.empty(capacity, dtype=np.int64)
        row_ids[: self._n] = self._row_ids[: self._n]
        self._storage, self._row_ids = storage, row_ids

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        ids, vecs = new_rows(ids, vecs, self.dim, self.contains)
        b = len(ids)
        if b == 0:
            return
        need = self._n + b
        if need > self.capacity():
            self.reserve(max(need, int(self.capacity() * GROWTH), MIN_CAPACITY))
        start = self._n
        self._write_rows(start, vecs)
        self._row_ids[start:need] = ids
        self._slot.update(zip(ids.tolist(), range(start, need), strict=True))
        self._n = need

    def _slots_of(self, ids: np.ndarray) -> np.ndarray:
        get = self._slot.get
        slots = [get(i, -1) for i in ids.tolist()]
        arr = np.fromiter(slots, dtype=np.int64, count=len(slots))
        if (arr < 0).any():
            raise UnknownIdError(f"ids not stored in this segment: {ids[arr < 0][:10].tolist()}")
        return arr

    def remove(self, ids: np.ndarray) -> np.ndarray:
        ids = as_ids(ids)
        slots = self._slots_of(ids)
        removed = self._gather(slots)
        new_n = self._n - len(slots)
        holes = np.sort(slots[slots < new_n])
        tail = np.arange(new_n, self._n, dtype=np.int64)
        movers = tail[~np.isin(tail, slots)]
        if len(holes):
            self._move_rows(holes, movers)
            moved_ids = self._row_ids[movers]
            self._row_ids[holes] = moved_ids
        for i in ids.tolist():
            del self._slot[i]
        if len(holes):
            self._slot.update(zip(moved_ids.tolist(), holes.tolist(), strict=True))
        self._n = new_n
        return removed

    def contains(self, ids: np.ndarray) -> np.ndarray:
        slot = self._slot
        return np.fromiter((i in slot for i in np.asarray(ids).tolist()), dtype=bool, count=len(ids))

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = as_ids(ids, unique=False)
        return self._gather(self._slots_of(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        m = len(queries)
        kk = min(k, self._n)
        if kk == 0:
            return np.empty((m, 0), dtype=np.float32), np.empty((m, 0), dtype=np.int64)
        scores, rows = self._search_rows(queries, kk)
        return scores, self._row_ids[rows]

    def count(self) -> int:
        return self._n

    def ids(self) -> np.ndarray:
        return self._row_ids[: self._n].copy()

    def _host_rows(self) -> np.ndarray:
        """Rows [0, n) on the host; a view where the storage allows (read it under the lock)."""
        return self._gather(np.arange(self._n, dtype=np.int64))

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ids(), np.array(self._host_rows(), copy=True)

    def save(self, directory: Path, stem: str) -> dict[str, str]:
        return save_arrays(directory, stem, self._row_ids[: self._n], self._host_rows())

    def load(self, directory: Path, files: dict[str, str]) -> None:
        ids, vecs = load_arrays(directory, files)
        self.load_arrays(ids, vecs)

    def load_arrays(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        """Bulk fill of an empty backend: one copy into a buffer with headroom, no per-row work
        beyond building the id map."""
        if self._n:
            raise DuplicateIdError("load into a backend that already holds vectors")
        ids = as_ids(ids)
        vecs = as_vectors(vecs, len(ids), self.dim)
        self.reserve(max(int(len(ids) * GROWTH), MIN_CAPACITY))
        self.add(ids, vecs)
