"""TorchScript from outside, vetted in a child process that cannot touch the host, and
re-serialised so that no process of the service ever runs code its author wrote.

Why: a TorchScript archive is code. ``torch.jit.load`` runs its ``__setstate__`` methods, and
TorchScript can call ``torch.from_file(path, shared=True)``, which maps any file the process can
open for reading and writing: an upload overwrote a file outside the data directory during its
registration, and a ``forward`` that loops for minutes was accepted. So an uploaded archive is
loaded, run and frozen only in :mod:`models.sandbox_child`: new user, mount, network and IPC
namespaces, an empty read-only root holding only the Python installation and the system
libraries, no environment (no tokens, no database URL), limits on memory, CPU seconds and
output, and a wall-clock limit after which it is killed. What comes back is torch's own
printing of the frozen ``forward`` graph (weights as constants, every other method gone, no
operator that reaches the host), which the service then loads like any archive.

Where the namespaces are not allowed (some container runtimes, kernels that restrict
unprivileged user namespaces) uploads of TorchScript are refused with that reason; an operator
can still put a file in the model directory, which is trusted, and register it by path.
"""

from __future__ import annotations

import json
import math
import os
import select
import signal
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.checkpoint import CheckpointError
from models.sandbox_child import defines_setstate

CHILD = Path(__file__).with_name("sandbox_child.py")
VETTED_WEIGHT, VETTED_BIAS = "classifier_weight", "classifier_bias"  # the head's buffers in a vetted archive
_STARTUP_SECONDS = 120.0  # entering the sandbox and importing torch, on a loaded machine
_OUTPUT_SLACK = 64 << 20  # a vetted archive holds the same weights as the upload, plus torch's code


class SandboxUnavailable(CheckpointError):
    """This machine cannot build the sandbox, so archives from outside cannot be taken."""


@dataclass(frozen=True)
class SandboxLimits:
    seconds: float = 60.0  # load, two forward passes and the freeze, wall clock
    memory_bytes: int = 4 << 30  # address space of the child (torch alone maps about 1 GB)


def visible_paths() -> list[str]:
    """What the child needs to see, read-only: Python, its packages, the system libraries and
    the directory of the child script; nothing else of the host (no data or model directory)."""
    paths = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        *(os.path.realpath(p) for p in (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"])),
        str(CHILD.parent.resolve()),
        "/usr",
        "/lib",
        "/lib64",
        "/lib32",
        "/bin",
        "/etc/ld.so.cache",
        "/dev/null",
        "/dev/zero",
        "/dev/urandom",
    }
    return sorted(p for p in paths if p and os.path.exists(p))


def vet_torchscript(archive: Path, doc: dict[str, Any], limits: SandboxLimits) -> tuple[bytes, dict[str, Any]]:
    """The vetted archive's bytes and its metadata (the classifier head renamed to the buffers
    it now lives in). CheckpointError says why an archive is refused: it failed to load or run,
    it used an operator an encoder may not, it ran past ``limits.seconds``, or it ran out of
    memory; SandboxUnavailable when the sandbox cannot be built here."""
    size = archive.stat().st_size
    cap = 2 * size + _OUTPUT_SLACK
    with tempfile.TemporaryDirectory(prefix="hotrefresh-sandbox-") as work:
        box = Path(work, "box")
        box.mkdir()
        spec = {
            "box": str(box),
            "visible": visible_paths(),
            "memory_bytes": int(limits.memory_bytes),
            "cpu_seconds": math.ceil(limits.seconds) + 1,
            "output_bytes": cap,
            "input_channels": int(doc["input_channels"]),
            "input_size": [int(v) for v in doc["input_size"]],
            "classifier": doc.get("classifier"),
        }
        out_path, err_path = Path(work, "out"), Path(work, "err")
        ready, ready_w = os.pipe()
        spec["ready_fd"] = ready_w
        with archive.open("rb") as stdin, out_path.open("wb") as out, err_path.open("wb") as err:
            child = subprocess.Popen(  # our own script, by absolute path
                [sys.executable, "-I", str(CHILD.resolve()), json.dumps(spec)],
                stdin=stdin,
                stdout=out,
                stderr=err,
                cwd=box,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1"},
                start_new_session=True,
                pass_fds=(ready_w,),
            )
            os.close(ready_w)
            try:
                # Start-up (namespaces, importing torch) has its own, generous limit; the
                # archive's time starts when the child says it is about to load it.
                started, _, _ = select.select([ready], [], [], _STARTUP_SECONDS)
                status = child.wait(timeout=limits.seconds if started else 0)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
                raise CheckpointError(
                    f"{archive.name}: loading and running the encoder did not finish within "
                    f"{limits.seconds:g} s (HOTREFRESH_MODEL_CHECK_SECONDS); it was stopped"
                ) from None
            finally:
                os.close(ready)
        said = _last_line(err_path)
        if status == 3:
            raise SandboxUnavailable(
                f"TorchScript uploads are run in a sandbox this machine cannot build ({said}); put the "
                "file in the model directory (HOTREFRESH_MODEL_DIR) and register it by path"
            )
        if status != 0:
            raise CheckpointError(f"{archive.name}: {said or _death(status, limits)}")
        vetted = out_path.read_bytes()
    if defines_setstate(vetted):  # the child checks this too; this process trusts only what it sees
        raise CheckpointError(f"{archive.name}: the vetted archive still defines __setstate__")
    renamed = dict(doc)
    if doc.get("classifier") is not None:
        renamed["classifier"] = {**doc["classifier"], "weight": VETTED_WEIGHT, "bias": VETTED_BIAS}
    return vetted, renamed


def _last_line(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 4000))
        lines = f.read().decode("utf-8", "replace").strip().splitlines()
    return lines[-1][:2000] if lines else ""


def _death(status: int, limits: SandboxLimits) -> str:
    if status == -signal.SIGXCPU:
        return f"the encoder used more than {limits.seconds:g} s of CPU (HOTREFRESH_MODEL_CHECK_SECONDS)"
    if status in (-signal.SIGKILL, -signal.SIGSEGV, -signal.SIGABRT):
        return f"the encoder's check died (signal {-status}); more than {limits.memory_bytes >> 20} MB of memory?"
    if status == -signal.SIGXFSZ:
        return "the vetted archive would be larger than the upload allows"
    return f"the encoder's check failed (exit status {status})"
