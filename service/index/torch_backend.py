"""The GPU backend: the segment's rows in a torch tensor on the device, searched with FAISS's
GPU brute-force kNN (``faiss.knn_gpu`` over the device array, from the ``faiss-gpu`` wheels of the
``gpu`` extra) where FAISS has a GPU, else with one matmul and ``topk``.

FAISS's GPU flat index can neither take explicit ids nor remove, so the vectors live in a device
tensor this class owns, compacted like the CPU buffer (``dense.DenseBackend``): a move touches
B rows on the device and never copies the segment, and ``knn_gpu`` searches that same tensor in
place. Any torch device works for the torch path, which is how the tests exercise this code on a
machine without CUDA; the FAISS path is chosen only for rows on a CUDA device.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.index.dense import DenseBackend

# Bytes of scores one search step may materialise (queries x rows x 4); larger query batches are
# split so a 1M-row segment never needs more than this much scratch memory.
SCORE_BUDGET_BYTES = 1 << 30


class TorchBackend(DenseBackend):
    kind = "gpu"

    def __init__(self, dim: int, device: str = "cuda") -> None:
        import torch

        self._torch = torch
        self.device = torch.device(device)
        self._faiss: tuple[Any, Any] | None = self._faiss_gpu()
        self.engine = "faiss" if self._faiss is not None else "torch"
        super().__init__(dim)

    def _faiss_gpu(self) -> tuple[Any, Any] | None:
        """(faiss, its GPU resources) when the rows live on CUDA and FAISS was built with GPU
        support; None otherwise (faiss-cpu, no GPU visible to FAISS, another device)."""
        if self.device.type != "cuda":
            return None
        try:
            import faiss
            import faiss.contrib.torch_utils  # lets knn_gpu take and return torch tensors
        except ImportError:
            return None
        if not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() < 1:
            return None
        return faiss, faiss.StandardGpuResources()

    def _alloc(self, capacity: int) -> Any:
        return self._torch.empty((capacity, self.dim), dtype=self._torch.float32, device=self.device)

    def _copy_prefix(self, src: Any, dst: Any, n: int) -> None:
        dst[:n] = src[:n]

    def _write_rows(self, start: int, vecs: np.ndarray) -> None:
        self._storage[start : start + len(vecs)] = self._torch.from_numpy(vecs).to(self.device)

    def _index(self, slots: np.ndarray) -> Any:
        return self._torch.from_numpy(np.ascontiguousarray(slots, dtype=np.int64)).to(self.device)

    def _gather(self, slots: np.ndarray) -> np.ndarray:
        return self._storage[self._index(slots)].cpu().numpy()

    def _move_rows(self, dst: np.ndarray, src: np.ndarray) -> None:
        self._storage[self._index(dst)] = self._storage[self._index(src)]

    def _search_rows(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        rows = self._storage[: self._n]
        step = max(1, SCORE_BUDGET_BYTES // (4 * self._n))
        q = torch.from_numpy(queries).to(self.device)
        scores, idx = [], []
        if self._faiss is not None:
            faiss, res = self._faiss
            d, i = faiss.knn_gpu(
                res, q.contiguous(), rows, k, metric=faiss.METRIC_INNER_PRODUCT, device=self.device.index or 0
            )
            return d.cpu().numpy(), i.cpu().numpy()
        with torch.inference_mode():
            for s in range(0, len(q), step):
                top = torch.topk(q[s : s + step] @ rows.T, k, dim=1, largest=True, sorted=True)
                scores.append(top.values)
                idx.append(top.indices)
            return torch.cat(scores).cpu().numpy(), torch.cat(idx).cpu().numpy()

    def synchronize(self) -> None:
        """Wait for queued device work (benchmarks time complete operations)."""
        if self.device.type == "cuda":
            self._torch.cuda.synchronize(self.device)
