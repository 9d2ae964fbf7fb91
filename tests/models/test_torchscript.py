"""Bring-your-own TorchScript encoders: what registration checks, and the export of checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint
from models.torchscript import export_torchscript, is_torchscript, load_encoder, load_torchscript
from tests.utils.checkpoints import make_tiny_checkpoint
from tests.utils.encoders import save_user_encoder


def test_a_user_encoder_loads_with_its_head_and_normalised_embeddings(tmp_path: Path) -> None:
    meta = save_user_encoder(tmp_path / "u.pt", "u", dim=16, classes=7, size=32)
    m = load_encoder(tmp_path / "u.pt", device="cpu")
    assert (m.meta.name, m.meta.num_classes, m.meta.input_size, m.meta.mean) == ("u", 7, (32, 32), meta["mean"])
    x = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    emb = m.embed_tensor(x)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    # the head as the service uses it: scale * W v + b on the normalised embedding
    module = torch.jit.load(str(tmp_path / "u.pt"))
    w, b = m.classifier_weights()
    np.testing.assert_allclose(w, 10.0 * module.head.weight.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(b, 10.0 * module.head.bias.detach().numpy(), rtol=1e-6)
    # the background path gives the same numbers
    np.testing.assert_allclose(m.submit_tensor(x).result(), emb, atol=1e-6)


def test_an_encoder_without_a_head_has_no_classifier(tmp_path: Path) -> None:
    save_user_encoder(tmp_path / "u.pt", "u", classes=None)
    m = load_torchscript(tmp_path / "u.pt", device="cpu")
    assert not m.has_classifier and m.meta.num_classes == 0
    with pytest.raises(CheckpointError, match="no classifier head"):
        m.classifier_weights()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embedding_dim": 17}, "expected \\(classes, 17\\)"),
        ({"embedding_dim": 17, "classifier": None}, "expected \\(2, 17\\)"),
        ({"input_channels": 1, "mean": 0.5, "std": 0.2}, "forward failed"),
        ({"mean": [0.5, 0.5]}, "one number per input channel"),
        ({"std": 0}, "std must be positive"),
        ({"resize": "squash"}, "resize must be one of"),
        ({"input_size": [32]}, "input_size"),
        ({"classifier": {"weight": "nope", "bias": "head.bias"}}, "not a parameter or buffer"),
        ({"classifier": {"weight": "head.bias", "bias": "head.bias"}}, "do not form"),
        ({"colour": "yes"}, "unknown metadata keys"),
        ({"name": ""}, "name must be a non-empty string"),
    ],
)
def test_bad_metadata_is_refused_naming_the_field(tmp_path: Path, change: dict, message: str) -> None:
    meta = save_user_encoder(tmp_path / "u.pt", "u", dim=16, size=32, sidecar=False)
    with pytest.raises(CheckpointError, match=message):
        load_torchscript(tmp_path / "u.pt", device="cpu", metadata={**meta, **change})


@pytest.mark.parametrize(("bad", "message"), [("dim", "returned \\(2, 17\\)"), ("nan", "non-finite")])
def test_outputs_are_checked_on_a_blank_batch(tmp_path: Path, bad: str, message: str) -> None:
    save_user_encoder(tmp_path / "u.pt", "u", dim=16, bad=bad)
    with pytest.raises(CheckpointError, match=message):
        load_torchscript(tmp_path / "u.pt", device="cpu")


def test_metadata_is_required_and_garbage_is_not_an_archive(tmp_path: Path) -> None:
    save_user_encoder(tmp_path / "u.pt", "u", sidecar=False)
    with pytest.raises(CheckpointError, match="needs its metadata"):
        load_torchscript(tmp_path / "u.pt", device="cpu")
    (tmp_path / "u.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_torchscript(tmp_path / "u.pt", device="cpu")
    (tmp_path / "g.pt").write_bytes(b"PK\x03\x04 garbage")
    (tmp_path / "g.json").write_text(json.dumps({"name": "g"}))
    assert not is_torchscript(tmp_path / "g.pt")
    with pytest.raises(CheckpointError, match="lacks"):
        load_torchscript(tmp_path / "g.pt", device="cpu")


@pytest.mark.parametrize("arch", ["conv2", "resnet18"])
def test_export_reproduces_the_checkpoint_and_carries_its_metadata(tmp_path: Path, arch: str) -> None:
    make_tiny_checkpoint(tmp_path / "c.pt", "c", arch=arch, compatible_with="base")
    doc = export_torchscript(tmp_path / "c.pt", tmp_path / "out" / "c.pt", name="c-ts")
    assert doc["compatible_with"] == "base" and doc["name"] == "c-ts"
    (tmp_path / "out" / "c.json").unlink()  # the archive carries the metadata too
    exported, original = load_encoder(tmp_path / "out" / "c.pt", "cpu"), load_checkpoint(tmp_path / "c.pt", "cpu")
    assert is_torchscript(tmp_path / "out" / "c.pt") and not is_torchscript(tmp_path / "c.pt")
    x = np.random.default_rng(1).integers(0, 256, (9, 1, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(exported.embed_tensor(x), original.embed_tensor(x), atol=1e-5)
    for a, b in zip(exported.classifier_weights(), original.classifier_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)
