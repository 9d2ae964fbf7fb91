"""Background encoding (models/runtime.py): the same vectors as the synchronous call, in order,
errors where the caller collects them, and no hang in a forked child."""

import os
import select
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.runtime import EncodeJob, start_interop_pool
from tests.utils.checkpoints import make_tiny_checkpoint


@pytest.fixture()
def model(tmp_path: Path):
    make_tiny_checkpoint(tmp_path / "m.pt", "m", arch="conv4", embedding_dim=16, seed=3)
    loaded = load_checkpoint(tmp_path / "m.pt", device="cpu")
    loaded.batch_size = 8
    loaded.warm_up()
    return loaded


def test_jobs_queued_back_to_back_give_the_synchronous_vectors_in_order(model) -> None:
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8) for n in (21, 8, 3)]
    expect = [model.embed_tensor(b) for b in batches]
    jobs = [model.submit_tensor(b) for b in batches]  # all queued before any result is read
    assert model._launcher is not None and not any(isinstance(p, np.ndarray) for p in jobs[0]._parts)
    assert len(jobs[0]._parts) == 3  # 21 items in batches of 8: three forked graph calls
    for job, want in zip(jobs, expect, strict=True):
        got = job.result()
        assert got.dtype == np.float32 and got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)


def test_input_the_graph_does_not_take_is_encoded_at_once(model) -> None:
    x = torch.rand(5, 1, 28, 28)  # float input: the eager path, returned as a finished job
    job = model.submit_tensor(x)
    assert all(isinstance(p, np.ndarray) for p in job._parts)
    np.testing.assert_allclose(job.result(), model.embed_tensor(x), atol=1e-6)
    with pytest.raises(ValueError, match="input channels"):
        model.submit_tensor(np.zeros((2, 2, 28, 28), np.uint8))  # the synchronous call's own error


def test_an_error_inside_a_background_job_is_raised_by_result() -> None:
    class Boom(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.view(-1, 7)  # 10 elements do not fit: fails inside the forked graph

    from models.runtime import make_launcher

    assert start_interop_pool()
    job = EncodeJob([make_launcher(torch.jit.script(Boom()))(torch.zeros(10))])
    with pytest.raises(RuntimeError):
        job.result()


def test_a_forked_child_does_not_use_the_parents_pool(model) -> None:
    """torch's pool threads do not survive fork: a job queued there would wait forever. The
    child falls back to encoding in its own thread (here: one intra-op thread, as workers run)."""
    assert start_interop_pool()
    x = np.random.default_rng(1).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        answer = _in_forked_child(model, x, model.embed_tensor(x))
    finally:
        torch.set_num_threads(threads)
    assert answer == b"ok"


def _in_forked_child(model, x: np.ndarray, want: np.ndarray) -> bytes:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            job = model.submit_tensor(x)
            ok = (
                not start_interop_pool()
                and all(isinstance(p, np.ndarray) for p in job._parts)
                and np.array_equal(job.result(), want)
            )
            os.write(w, b"ok" if ok else b"wrong")
        finally:
            os._exit(0)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 60)
    answer = os.read(r, 16) if ready else b"hung"
    os.close(r)
    if not ready:
        os.kill(pid, 9)
    os.waitpid(pid, 0)
    return answer
