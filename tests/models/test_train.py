from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, read_meta
from models.train import TrainConfig, augment, train_and_save, train_encoder
from tests.utils.checkpoints import make_tiny_checkpoint


def _data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 4, n)


@pytest.mark.parametrize("loss", ["ract", "vanilla", "bct", "ract+bct"])
def test_old_model_is_frozen_and_gets_no_gradient(tmp_path: Path, loss: str) -> None:
    make_tiny_checkpoint(tmp_path / "old.pt", "old", embedding_dim=16, num_classes=4)
    old = load_checkpoint(tmp_path / "old.pt", device="cpu")
    before = {k: v.clone() for k, v in old.model.state_dict().items()}
    x, y = _data()
    cfg = TrainConfig(arch="conv2", embedding_dim=16, num_classes=4, epochs=1, batch_size=16, loss=loss)
    new, hist = train_encoder(
        x, y, cfg, old=old, old_classes=np.array([0, 1]), device=torch.device("cpu"), progress=False
    )
    assert all(p.grad is None for p in old.model.parameters())
    for k, v in old.model.state_dict().items():
        assert torch.equal(v, before[k]), f"old model's {k} changed"  # incl. BatchNorm running stats
    assert hist[0]["comp"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(new.state_dict().values(), before.values(), strict=True))


def test_ract_plus_bct_is_the_sum_of_both_terms(tmp_path: Path) -> None:
    """One step (the whole set is one batch) measured before any update: the compatibility term of
    ract+bct is RACT's term plus BCT's, each computed on the same augmented batch."""
    make_tiny_checkpoint(tmp_path / "old.pt", "old", embedding_dim=16, num_classes=4)
    x, y = _data()
    comp = {}
    for loss in ("ract", "bct", "ract+bct"):
        old = load_checkpoint(tmp_path / "old.pt", device="cpu")
        cfg = TrainConfig(arch="conv2", embedding_dim=16, num_classes=4, epochs=1, batch_size=len(x), loss=loss)
        _, hist = train_encoder(
            x, y, cfg, old=old, old_classes=np.array([0, 1]), device=torch.device("cpu"), progress=False
        )
        comp[loss] = hist[0]["comp"]
    assert comp["ract"] > 0 and comp["bct"] > 0
    assert comp["ract+bct"] == pytest.approx(comp["ract"] + comp["bct"], rel=1e-5)


def test_training_is_seeded(tmp_path: Path) -> None:
    x, y = _data()
    cfg = TrainConfig(arch="conv2", embedding_dim=8, num_classes=4, epochs=1, batch_size=16, seed=5)
    a, _ = train_encoder(x, y, cfg, device=torch.device("cpu"), progress=False)
    b, _ = train_encoder(x, y, cfg, device=torch.device("cpu"), progress=False)
    for (ka, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(va, vb), ka


def test_train_and_save_records_lineage(tmp_path: Path) -> None:
    x, y = _data()
    base = {"arch": "conv2", "embedding_dim": 8, "num_classes": 4, "epochs": 1, "batch_size": 32}
    train_and_save(x, y, TrainConfig(**base), tmp_path / "o.pt", "o", device=torch.device("cpu"), progress=False)
    meta, _ = train_and_save(
        x,
        y,
        TrainConfig(loss="ract", **base),
        tmp_path / "n.pt",
        "n",
        old_path=tmp_path / "o.pt",
        device=torch.device("cpu"),
        progress=False,
    )
    assert (meta.trained_with, meta.compatible_with) == ("ract", "o")
    assert read_meta(tmp_path / "o.pt").trained_with == "classification"
    meta2, _ = train_and_save(
        x,
        y,
        TrainConfig(loss="none", **base),
        tmp_path / "i.pt",
        "i",
        old_path=tmp_path / "o.pt",
        device=torch.device("cpu"),
        progress=False,
    )
    assert (meta2.trained_with, meta2.compatible_with) == ("independent", None)
    meta3, _ = train_and_save(
        x,
        y,
        TrainConfig(loss="ract+bct", **base),
        tmp_path / "rb.pt",
        "rb",
        old_path=tmp_path / "o.pt",
        device=torch.device("cpu"),
        progress=False,
    )
    assert (meta3.trained_with, meta3.compatible_with) == ("ract+bct", "o")
    assert load_checkpoint(tmp_path / "rb.pt", device="cpu").meta.trained_with == "ract+bct"
    assert meta.extra["recipe"]["tau"] == 0.05 and meta.extra["recipe"]["lam"] == 1.0


def test_bad_training_requests_are_refused(tmp_path: Path) -> None:
    x, y = _data()
    with pytest.raises(ValueError, match="needs the old model"):
        train_encoder(x, y, TrainConfig(loss="ract"), progress=False)
    with pytest.raises(ValueError, match="unknown loss"):
        train_encoder(x, y, TrainConfig(loss="triplet"), progress=False)
    make_tiny_checkpoint(tmp_path / "old.pt", "old", embedding_dim=16)
    old = load_checkpoint(tmp_path / "old.pt", device="cpu")
    with pytest.raises(ValueError, match="embedding space"):
        train_encoder(x, y, TrainConfig(embedding_dim=32, loss="ract"), old=old, progress=False)


def test_two_augmentations_are_independent() -> None:
    x = torch.rand(8, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    a, b = augment(x, g, 2.0, True), augment(x, g, 2.0, True)
    assert a.shape == x.shape and not torch.allclose(a, b)
    same = augment(x, torch.Generator().manual_seed(0), 0.0, False)
    assert torch.allclose(same, x, atol=1e-5)  # no shift, no flip: identity
