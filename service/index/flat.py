"""The default backend: exact inner product over a dense numpy buffer, searched by FAISS.

``faiss.knn`` with ``METRIC_INNER_PRODUCT`` runs the same kernels as ``IndexFlatIP.search``
(SIMD scan for a few queries, blocked BLAS for batches), so a segment costs what a plain flat
index of the same size costs. FAISS's own ``remove_ids`` on a flat index shifts every later row
(O(N) per call); the buffer here is compacted by ``dense.DenseBackend`` instead.
"""

from __future__ import annotations

import faiss
import numpy as np

from service.index.dense import DenseBackend


class FlatBackend(DenseBackend):
    kind = "flat"

    def _alloc(self, capacity: int) -> np.ndarray:
        return np.empty((capacity, self.dim), dtype=np.float32)

    def _copy_prefix(self, src: np.ndarray, dst: np.ndarray, n: int) -> None:
        dst[:n] = src[:n]

    def _write_rows(self, start: int, vecs: np.ndarray) -> None:
        self._storage[start : start + len(vecs)] = vecs

    def _gather(self, slots: np.ndarray) -> np.ndarray:
        return self._storage[slots]

    def _host_rows(self) -> np.ndarray:
        return self._storage[: self._n]

    def _move_rows(self, dst: np.ndarray, src: np.ndarray) -> None:
        self._storage[dst] = self._storage[src]

    def _search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss.knn(queries, self._storage[: self._n], k, metric=faiss.METRIC_INNER_PRODUCT)
