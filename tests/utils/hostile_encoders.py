"""TorchScript encoders as a hostile uploader would build them (issue 23's probes), for the
sandbox's tests and the registration routes' tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

MARKER = b"untouched"
SIZE = 8


class OverwritesOnLoad(nn.Module):
    """The probe of issue 23: ``__setstate__`` maps a file of the host, shared, and writes it."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.w = torch.randn(4, 3 * SIZE * SIZE)
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t() + 1.0

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.w, self.target, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.w = state[0]
        self.target = state[1]
        self.training = state[2]
        mapped = torch.from_file(self.target, shared=True, size=len("untouched"), dtype=torch.uint8)
        mapped.fill_(88)
        self.w = self.w + mapped.sum().float() * 0.0  # used, so no pass can drop the write


class ReadsInForward(nn.Module):
    """No ``__setstate__``: ``forward`` itself reads a file (``/dev/zero`` is there in the sandbox)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.randn(4, 3 * SIZE * SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        leak = torch.from_file("/dev/zero", shared=False, size=4, dtype=torch.float32)
        return x.flatten(1) @ self.w.t() + 1.0 + leak.sum()


class Slow(nn.Module):
    """A forward that loops for far longer than any check waits."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.randn(4, 3 * SIZE * SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.flatten(1) @ self.w.t()
        for _ in range(1_000_000_000):
            y = y + 1.0
        return y


class HarmlessState(nn.Module):
    """A custom ``__setstate__`` that does nothing wrong here: the vetted archive must still not
    carry it, because the service's own processes load that archive again later."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.randn(4, 3 * SIZE * SIZE)
        self.loads = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w.t() + float(self.loads)

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, int, bool]:
        return (self.w, self.loads, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, int, bool]) -> None:
        self.w = state[0]
        self.loads = state[1] + 1
        self.training = state[2]


def doc(name: str = "m") -> dict:
    return {
        "name": name,
        "embedding_dim": 4,
        "input_channels": 3,
        "input_size": [SIZE, SIZE],
        "mean": 0.5,
        "std": 0.25,
    }


def save(module: nn.Module, path: Path) -> Path:
    torch.jit.script(module.eval()).save(str(path))
    return path


@torch.jit.script
class Counter:
    """A TorchScript class with its own ``__setstate__``, which a load runs."""

    def __init__(self, v: int) -> None:
        self.v = v

    def __getstate__(self) -> int:
        return self.v

    def __setstate__(self, state: int) -> None:
        self.v = state + 1


class KeepsAnObject(nn.Module):
    """``forward`` mutates an object's field, so freezing cannot fold the object away and the
    archive it prints still holds the object's class, ``__setstate__`` included."""

    def __init__(self) -> None:
        super().__init__()
        self.counter = Counter(3)
        self.w = torch.randn(4, 3 * SIZE * SIZE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter.v = self.counter.v + 1
        return x.flatten(1) @ self.w.t() + float(self.counter.v)
