"""How an encoder runs inside a process: torch's thread pools, and encodings that run in the
background while Python does something else.

Why this exists (benchmark B1, docs/workers.md): a backfill worker runs the encoder beside two
Python threads (image loading, SQL writes). Even with the forward pass in a TorchScript graph
that releases the GIL, the thread that called it needs the GIL back to return, and CPython hands
the GIL over badly to a thread that waits for it while others keep releasing and re-taking it
(PIL, sqlite3 and socket calls all do, many times per image): the waiting thread's timeout never
fires, so it waits until the others block. Measured beside one image-decoding thread, the
encoder lost 10-15% of its throughput that way while its CPU time per item barely changed.

The fix is to never let the encoder's compute wait for Python: a job is *launched* with
``torch.jit.fork`` from a scripted wrapper, which queues it on torch's inter-op thread (a C++
thread that never takes the GIL), and the next batch is queued behind it before the previous
result is collected. Whenever the Python side is late, the C++ thread simply starts the next
queued batch.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

_pool_lock = threading.Lock()
_pool_pid: int | None = None  # the process that started torch's inter-op pool


def start_interop_pool(intra_op_threads: int | None = None) -> bool:
    """Size torch's thread pools for one encoder per process and start the inter-op pool now;
    whether background encoding can be used in this process.

    One inter-op thread: jobs queued with :class:`EncodeJob` then run one after another in
    launch order, on as many cores as the intra-op setting says, never two batches at once.
    Starting the pool here matters because a new thread inherits its creator's scheduling
    priority: created lazily by a backfill's niced loader thread, the pool thread (which does
    the encoder's work) would be niced too. Call it from a process's main thread before anything
    else uses torch's parallelism; later calls only answer.

    False in a process forked from one that had started the pool: torch's pool threads do not
    survive ``fork`` and a job queued there would never run (Celery's prefork parent never
    starts it; its children do).
    """
    global _pool_pid
    with _pool_lock:
        if _pool_pid is not None:
            return _pool_pid == os.getpid()
        if intra_op_threads is not None:
            torch.set_num_threads(max(1, int(intra_op_threads)))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # parallel work already ran in this process: keep torch's pool
            log.debug("inter-op threads already set; keeping %d", torch.get_num_interop_threads())
        # One forked no-op creates the pool thread here. Future.wait, not torch.jit.wait: the
        # latter keeps the GIL while it waits and deadlocks.
        make_launcher(torch.nn.Identity())(torch.zeros(1)).wait()
        _pool_pid = os.getpid()
        return True


class _Launcher(torch.nn.Module):
    """Scripted so that ``torch.jit.fork`` really forks: called from eager Python, fork runs its
    function at once, in the caller's thread."""

    def __init__(self, graph: torch.nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.jit.Future[torch.Tensor]:
        return torch.jit.fork(self.graph, x)


def make_launcher(graph: torch.nn.Module) -> torch.jit.ScriptModule:
    """A module whose call queues ``graph(x)`` on the inter-op pool and returns its future."""
    return torch.jit.script(_Launcher(graph))


class EncodeJob:
    """Embeddings being computed in the background (or already computed), in input order.

    ``result()`` waits for them; an error raised by the computation is raised there. The input
    tensors are kept alive by the futures until then.
    """

    def __init__(self, parts: Sequence[torch.jit.Future | np.ndarray]) -> None:
        self._parts = list(parts)

    @classmethod
    def done(cls, embeddings: np.ndarray) -> EncodeJob:
        return cls([embeddings])

    def result(self) -> np.ndarray:
        out = [p if isinstance(p, np.ndarray) else p.wait().float().numpy() for p in self._parts]
        return np.ascontiguousarray(np.concatenate(out)) if len(out) != 1 else np.ascontiguousarray(out[0])
