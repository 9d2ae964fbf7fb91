"""What runs inside the TorchScript sandbox (``models.sandbox`` starts it): load an archive from
anyone, run it, and write back an archive with no code its author wrote.

Run as a script (``python -I models/sandbox_child.py SPEC``), importing nothing from this
project, so that only the Python installation and this one directory need to be visible inside.
Before torch is imported, the process enters new user, mount, network and IPC namespaces, and changes its
root to an empty tmpfs where only the Python installation, the system libraries and this
directory are mounted read-only: the archive's code runs where there is nothing of the host's
to read or write and no network. It then limits itself (address space, output size, few
descriptors), imports torch, and only then limits its CPU seconds and tells the parent, whose
wall clock starts there: the limits are the archive's, not torch's start-up. The archive
arrives on stdin; the vetted archive leaves on stdout; a refusal is one line on stderr and exit
status 2 (3: the sandbox could not be built).

Vetting: ``torch.jit.load`` (the archive's ``__setstate__`` methods run here, and only here),
then ``torch.jit.freeze``: the module's weights become constants of one inlined ``forward``
graph, and every other method, ``__setstate__`` included, is gone. That graph may only use
``aten``/``prim`` operators and none that reach the host (``aten::from_file``, ``aten::save``);
then it runs on a blank and a noise batch, the time limit counting. What is written back is torch's own printing of
that graph, with the classifier head's two tensors as attributes: loading it runs no code the
uploader wrote.
"""

from __future__ import annotations

import ctypes
import io
import json
import math
import os
import resource
import sys
import zipfile
from typing import NoReturn

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWIPC = 0x20000, 0x10000000, 0x40000000, 0x08000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 32, 4096, 16384, 1 << 18
REFUSED_OPS = frozenset({"aten::from_file", "aten::save", "prim::PythonOp", "prim::CallFunction", "prim::CallMethod"})
ALLOWED_NAMESPACES = ("aten::", "prim::")


def refuse(message: str, status: int = 2) -> NoReturn:
    sys.stderr.write(" ".join(message.split())[:2000] + "\n")
    sys.stderr.flush()
    os._exit(status)


def limit(memory_bytes: int, output_bytes: int) -> None:
    """No file is writable in the box; the one regular file written is stdout, capped here."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_FSIZE, (output_bytes, output_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def enter_box(box: str, visible: list[str]) -> None:
    """New namespaces; ``box`` (an empty directory) becomes a tmpfs root holding ``visible``
    read-only at their own paths, and then the root."""
    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            raise OSError(ctypes.get_errno(), f"{what}: {os.strerror(ctypes.get_errno())}")

    uid, gid = os.getuid(), os.getgid()
    check(libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC), "unshare")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")
    check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
    check(libc.mount(b"tmpfs", box.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"size=1m,mode=0755"), "tmpfs")
    for path in visible:
        if not os.path.exists(path):
            continue
        target = box + path
        if os.path.isdir(path):
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            open(target, "w").close()
        check(libc.mount(path.encode(), target.encode(), None, MS_BIND | MS_REC, None), f"bind {path}")
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID  # device files: /dev/null, /dev/urandom
        check(libc.mount(None, target.encode(), None, flags, None), f"read-only {path}")
    check(libc.mount(None, box.encode(), None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None), "seal root")
    os.chroot(box)
    os.chdir("/")


def vet(archive: bytes, spec: dict) -> bytes:
    import torch

    torch.set_num_threads(1)
    try:
        module = torch.jit.load(io.BytesIO(archive), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - whatever the archive does, it is a refusal
        refuse(f"not a loadable TorchScript archive: {e}")
    module.eval()
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    head = spec.get("classifier")
    kept: list[torch.Tensor] = []
    if head is not None:
        for key in ("weight", "bias"):
            t = tensors.get(str(head[key]))
            if t is None:
                refuse(f"classifier {key} {head[key]!r} is not a parameter or buffer of the module")
            kept.append(t.detach().float().clone())
    try:
        frozen = torch.jit.freeze(module)
    except Exception as e:  # noqa: BLE001
        refuse(f"the module cannot be frozen (weights folded into one forward graph): {e}")
    if frozen._c._method_names() != ["forward"]:
        refuse(f"after freezing, methods besides forward remain: {frozen._c._method_names()}")
    bad = sorted(_refused_ops(frozen.graph))
    if bad:
        refuse(f"the module uses operators an encoder may not: {bad[:10]}")

    c, (h, w) = spec["input_channels"], spec["input_size"]
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for x in (torch.zeros(2, c, h, w), torch.rand(2, c, h, w, generator=gen)):
            try:
                frozen(x)
            except Exception as e:  # noqa: BLE001
                refuse(f"forward failed on a batch of shape {tuple(x.shape)}: {e}")
    for name, t in zip(("classifier_weight", "classifier_bias"), kept, strict=False):
        frozen._c._register_attribute(name, torch._C.TensorType.get(), t)  # plain tensors, no code
    out = io.BytesIO()
    torch.jit.save(frozen, out)
    if defines_setstate(out.getvalue()):  # an object the graph still mutates kept its class
        refuse("after freezing, the module still holds an object whose class defines __setstate__")
    return out.getvalue()


def defines_setstate(archive: bytes) -> bool:
    """Whether any code in a TorchScript archive defines ``__setstate__`` (what a load runs)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as z:
        return any(b"__setstate__" in z.read(n) for n in z.namelist() if n.endswith(".py"))


def _refused_ops(graph: object) -> set[str]:
    found: set[str] = set()
    stack = list(graph.nodes())  # type: ignore[attr-defined]
    while stack:
        node = stack.pop()
        kind = node.kind()
        if kind in REFUSED_OPS or not kind.startswith(ALLOWED_NAMESPACES):
            found.add(kind)
        for block in node.blocks():
            stack.extend(block.nodes())
    return found


def main() -> None:
    spec = json.loads(sys.argv[1])
    archive = sys.stdin.buffer.read()
    try:
        enter_box(spec["box"], spec["visible"])
    except OSError as e:
        refuse(f"the sandbox could not be built: {e}", status=3)
    limit(spec["memory_bytes"], spec["output_bytes"])
    import torch  # noqa: F401 - before the clock starts: the limits are the archive's, not torch's start-up

    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = math.ceil(used.ru_utime + used.ru_stime) + spec["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    os.write(spec["ready_fd"], b"1")  # the parent's wall clock starts now
    os.close(spec["ready_fd"])
    vetted = vet(archive, spec)
    sys.stdout.buffer.write(vetted)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
