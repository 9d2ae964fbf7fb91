"""Checkpoints for other packages' tests and for the demo: fast, real, and in the real format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
    input_channels: int = 1,
    input_size: tuple[int, int] = (28, 28),
    arch_options: dict | None = None,
) -> ModelMeta:
    """A randomly initialised (untrained) but otherwise valid checkpoint; returns its metadata."""
    torch.manual_seed(seed)
    model = create_model(arch, embedding_dim, num_classes, input_channels, **(arch_options or {}))
    meta = ModelMeta(
        input_channels=input_channels,
        input_size=input_size,
        arch_options=dict(arch_options or {}),
        name=name,
        arch=arch,
        embedding_dim=embedding_dim,
        num_classes=num_classes,
        trained_with=trained_with,
        compatible_with=compatible_with,
    )
    return save_checkpoint(model.eval(), meta, path)


def train_tiny_pair(
    directory: str | Path, *, n_train: int = 3000, epochs: int = 1, seed: int = 0, progress: bool = False
) -> tuple[Path, Path]:
    """Trains a small old model (conv2, CE, first 30% of the slice) and a RACT-compatible new one
    (conv4, whole slice) on the first ``n_train`` Fashion-MNIST training images.

    Returns (old_path, new_path) named ``tiny-old`` / ``tiny-new-ract``; a few seconds on 2 cores.
    """
    from models.data import load_fashion_mnist
    from models.train import TrainConfig, train_and_save

    directory = Path(directory)
    images, labels = load_fashion_mnist("train")
    images, labels = images[:n_train], labels[:n_train]
    old_path, new_path = directory / "tiny-old.pt", directory / "tiny-new-ract.pt"
    half = (3 * n_train) // 10  # the old model sees 30%, as in the expansion allocation
    common = {"embedding_dim": 32, "epochs": epochs, "batch_size": 64, "seed": seed}
    train_and_save(
        images[:half],
        labels[:half],
        TrainConfig(arch="conv2", **common),
        old_path,
        "tiny-old",
        device=torch.device("cpu"),
        progress=progress,
    )
    train_and_save(
        images,
        labels,
        TrainConfig(arch="conv4", loss="ract", **common),
        new_path,
        "tiny-new-ract",
        old_path=old_path,
        device=torch.device("cpu"),
        progress=progress,
    )
    return old_path, new_path


def add_carried_map(new_path: str | Path, old_path: str | Path, images: np.ndarray) -> ModelMeta:
    """Rewrite the checkpoint at ``new_path`` carrying the old->new map from ``old_path``'s model,
    fitted on ``images`` as ``hotrefresh train --old`` fits it (models/carried_map.py)."""
    from models.carried_map import KEY, fit_carried_map
    from models.checkpoint import load_checkpoint

    old, new = load_checkpoint(old_path, device="cpu"), load_checkpoint(new_path, device="cpu")
    carried = fit_carried_map(old, new, images, from_model=old.meta.name, from_hash=old.meta.content_hash)
    assert carried is not None
    meta = new.meta
    meta.extra = {**meta.extra, KEY: carried.to_dict()}
    return save_checkpoint(new.model, meta, new_path)
