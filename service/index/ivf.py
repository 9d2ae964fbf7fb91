"""IVF backend for galleries too large for an exact scan: ``faiss.IndexIVFFlat`` (inner product)
with a hash-table direct map.

The hash-table direct map is what keeps moves O(B·D): ``remove_ids`` with an
``IDSelectorArray`` looks each id up and swaps it out of its inverted list, instead of scanning
every list. Until enough vectors arrive to train the coarse quantizer the segment is an exact
flat one, then it is trained once on what it holds and switches over.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import faiss
import numpy as np

from service.index.errors import DuplicateIdError, UnknownIdError
from service.index.files import load_arrays, save_arrays, save_bytes
from service.index.flat import FlatBackend
from service.index.validation import as_ids, new_rows

POINTS_PER_CENTROID = 39  # FAISS warns below this many training points per list
# faiss's bundled stubs lack the DirectMap class, which the SWIG module has at runtime.
_HASHTABLE_DIRECT_MAP: int = cast(Any, faiss).DirectMap.Hashtable


class IVFBackend:
    kind = "ivf"

    def __init__(self, dim: int, nlist: int = 1024, nprobe: int = 32, train_size: int | None = None) -> None:
        if nlist < 1 or nprobe < 1:
            raise ValueError("nlist and nprobe must be positive")
        self.dim = dim
        self.nlist = nlist
        self.nprobe = nprobe
        self.train_size = train_size or POINTS_PER_CENTROID * nlist
        self._pending: FlatBackend | None = FlatBackend(dim)
        self._index: faiss.IndexIVF | None = None
        self._live: set[int] = set()

    @property
    def trained(self) -> bool:
        return self._index is not None

    def _train(self) -> None:
        assert self._pending is not None
        ids, vecs = self._pending.export()
        nlist = max(1, min(self.nlist, len(ids) // POINTS_PER_CENTROID))
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vecs)
        self._adopt(index)
        index.add_with_ids(vecs, ids)
        self._pending = None

    def _adopt(self, index: faiss.Index) -> None:
        """Keep the owning Python wrapper (a downcast copy would free the index with it)."""
        if not isinstance(index, faiss.IndexIVF):
            raise ValueError(f"expected an IVF index, got {type(index).__name__}")
        index.set_direct_map_type(_HASHTABLE_DIRECT_MAP)
        index.nprobe = min(self.nprobe, index.nlist)
        self._index = index

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        ids, vecs = new_rows(ids, vecs, self.dim, self.contains)
        if self._pending is not None:
            self._pending.add(ids, vecs)
            if self._pending.count() >= self.train_size:
                self._train()
        else:
            assert self._index is not None
            self._index.add_with_ids(vecs, ids)
        self._live.update(ids.tolist())

    def _check_present(self, ids: np.ndarray) -> None:
        missing = ~self.contains(ids)
        if missing.any():
            raise UnknownIdError(f"ids not stored in this segment: {ids[missing][:10].tolist()}")

    def vectors(self, ids: np.ndarray) -> np.ndarray:
        ids = as_ids(ids, unique=False)
        self._check_present(ids)
        if self._pending is not None:
            return self._pending.vectors(ids)
        assert self._index is not None
        return self._index.reconstruct_batch(ids)

    def remove(self, ids: np.ndarray) -> np.ndarray:
        ids = as_ids(ids)
        removed = self.vectors(ids)
        if self._pending is not None:
            self._pending.remove(ids)
        elif len(ids):
            assert self._index is not None
            selector = faiss.IDSelectorArray(len(ids), faiss.swig_ptr(ids))
            self._index.remove_ids(selector)
        self._live.difference_update(ids.tolist())
        return removed

    def contains(self, ids: np.ndarray) -> np.ndarray:
        live = self._live
        return np.fromiter((i in live for i in np.asarray(ids).tolist()), dtype=bool, count=len(ids))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self._pending is not None:
            return self._pending.search(queries, k)
        assert self._index is not None
        kk = min(k, len(self._live))
        if kk == 0:
            m = len(queries)
            return np.empty((m, 0), dtype=np.float32), np.empty((m, 0), dtype=np.int64)
        scores, ids = self._index.search(queries, kk)
        scores[ids < 0] = -np.inf
        return scores, ids

    def count(self) -> int:
        return len(self._live)

    def ids(self) -> np.ndarray:
        return np.fromiter(self._live, dtype=np.int64, count=len(self._live))

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        if self._pending is not None:
            return self._pending.export()
        ids = self.ids()
        return ids, self.vectors(ids)

    def save(self, directory: Path, stem: str) -> dict[str, str]:
        ids, vecs = self.export()
        files = save_arrays(directory, stem, ids, vecs)
        if self._index is not None:
            files["ivf"] = f"{stem}.ivf.faiss"
            save_bytes(directory / files["ivf"], faiss.serialize_index(self._index))
        return files

    def load(self, directory: Path, files: dict[str, str]) -> None:
        """With the trained index file, no retraining and no re-adding; from plain arrays (a
        snapshot of another backend) it trains once, like a fresh segment."""
        if self._live:
            raise DuplicateIdError("load into a backend that already holds vectors")
        ids, vecs = load_arrays(directory, files)
        ids = as_ids(ids)
        if "ivf" in files:
            index = faiss.read_index(str(directory / files["ivf"]))
            if index.d != self.dim or index.ntotal != len(ids):
                raise ValueError(f"IVF file {files['ivf']} does not match its ids file")
            self._adopt(index)
            self._pending = None
            self._live = set(ids.tolist())
        else:
            self.add(ids, vecs)
