"""Bring-your-own encoders as a user would make them: a plain torch module, scripted and saved
with ``torch.jit``, and a metadata dict, with nothing from the project's checkpoint code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


class UserEncoder(nn.Module):
    """A small RGB CNN with a linear projection and an optional linear head (``head``)."""

    def __init__(self, dim: int, classes: int | None, channels: int = 3, bad: str = "") -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 8, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, 2, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.proj = nn.Linear(16, dim + (1 if bad == "dim" else 0))
        self.head = nn.Linear(dim, classes) if classes else nn.Identity()
        self.bad = bad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.proj(self.features(x))
        if self.bad == "nan":
            out = out * float("nan")
        return out


def save_user_encoder(
    path: Path,
    name: str,
    *,
    dim: int = 16,
    classes: int | None = 10,
    size: int = 40,
    seed: int = 0,
    compatible_with: str | None = None,
    bad: str = "",
    sidecar: bool = True,
    channels: int = 3,
) -> dict[str, Any]:
    """Writes a TorchScript encoder (and, with ``sidecar``, ``path``'s .json); returns the metadata."""
    torch.manual_seed(seed)
    module = torch.jit.script(UserEncoder(dim, classes, channels, bad).eval())
    path.parent.mkdir(parents=True, exist_ok=True)
    module.save(str(path))
    meta: dict[str, Any] = {
        "name": name,
        "embedding_dim": dim,
        "input_channels": channels,
        "input_size": [size, size],
        "mean": IMAGENET_MEAN if channels == 3 else 0.5,
        "std": IMAGENET_STD if channels == 3 else 0.25,
        "resize": "center_crop",
        "crop_ratio": 0.875,
        "compatible_with": compatible_with,
    }
    if classes:
        meta["classifier"] = {"weight": "head.weight", "bias": "head.bias", "scale": 10.0}
    if sidecar:
        path.with_suffix(".json").write_text(json.dumps(meta))
    return meta
