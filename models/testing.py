"""Checkpoints for other packages' tests and for the demo: fast, real, and in the real format."""

from __future__ import annotations

from pathlib import Path

import torch

from models.checkpoint import ModelMeta, save_checkpoint
from models.encoders import create_model


def make_tiny_checkpoint(
    path: str | Path,
    name: str,
    *,
    arch: str = "conv2",
    embedding_dim: int = 32,
    num_classes: int = 10,
    compatible_with: str | None = None,
    trained_with: str = "classification",
    seed: int = 0,
) -> ModelMeta:
    """A randomly initialised (untrained) but otherwise valid checkpoint; returns its metadata."""
    torch.manual_seed(seed)
    model = create_model(arch, embedding_dim, num_classes)
    meta = ModelMeta(
        name=name,
        arch=arch,
        embedding_dim=embedding_dim,
        num_classes=num_classes,
        trained_with=trained_with,
        compatible_with=compatible_with,
    )
    return save_checkpoint(model.eval(), meta, path)
