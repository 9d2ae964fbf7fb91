from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.checkpoint import CheckpointError, ModelMeta, load_checkpoint, read_meta, save_checkpoint
from models.encoders import create_model, list_architectures
from tests.utils.checkpoints import make_tiny_checkpoint


def test_round_trip_keeps_weights_meta_and_embeddings(tmp_path: Path) -> None:
    path = tmp_path / "m.pt"
    meta = make_tiny_checkpoint(path, "old-1", embedding_dim=16, seed=3)
    loaded = load_checkpoint(path, device="cpu")
    assert loaded.meta == meta
    assert meta.content_hash and len(meta.content_hash) == 64
    assert read_meta(path).name == "old-1"
    x = torch.randint(0, 256, (5, 28, 28), dtype=torch.uint8)
    torch.manual_seed(3)
    ref = create_model("conv2", 16, 10).eval()
    from models.preprocess import normalize_uint8

    with torch.no_grad():
        expect = ref.embedding(normalize_uint8(x, meta)).numpy()
    got = loaded.embed_tensor(x)
    np.testing.assert_allclose(got, expect, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_same_seed_same_hash_different_seed_different_hash(tmp_path: Path) -> None:
    a = make_tiny_checkpoint(tmp_path / "a.pt", "a", seed=1)
    b = make_tiny_checkpoint(tmp_path / "b.pt", "b", seed=1)
    c = make_tiny_checkpoint(tmp_path / "c.pt", "c", seed=2)
    assert a.content_hash == b.content_hash != c.content_hash


def test_embed_images_accepts_any_mode_and_size(tmp_path: Path) -> None:
    make_tiny_checkpoint(tmp_path / "m.pt", "m", embedding_dim=8)
    loaded = load_checkpoint(tmp_path / "m.pt", device="cpu")
    loaded.batch_size = 2  # forces several internal batches
    rng = np.random.default_rng(0)
    imgs = [
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L"),
        Image.fromarray(rng.integers(0, 255, (40, 33, 3), dtype=np.uint8), "RGB"),
        Image.fromarray(rng.integers(0, 255, (17, 60, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8), "L").convert("P"),
        Image.fromarray(rng.integers(0, 255, (100, 100), dtype=np.uint8), "L"),
    ]
    out = loaded.embed_images(imgs)
    assert out.shape == (5, 8) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    # an L image and the same pixels as a tensor give the same embedding
    np.testing.assert_allclose(out[0], loaded.embed_tensor(np.asarray(imgs[0])[None])[0], atol=1e-5)
    assert loaded.embed_images([]).shape == (0, 8)


@pytest.mark.parametrize("arch", ["conv2", "conv4"])
def test_traced_batch_path_equals_the_eager_forward_at_every_batch_size(tmp_path: Path, arch: str) -> None:
    """The backfill's uint8 (n,C,H,W) input runs a traced graph; it must give the eager forward's
    vectors for full and partial batches alike (the trace is taken at the first call's size)."""
    make_tiny_checkpoint(tmp_path / "m.pt", "m", arch=arch, embedding_dim=16, seed=5)
    loaded = load_checkpoint(tmp_path / "m.pt", device="cpu")
    loaded.batch_size = 8
    x = torch.randint(0, 256, (21, 1, 28, 28), dtype=torch.uint8)
    from models.preprocess import normalize_uint8

    with torch.inference_mode():
        expect = loaded.model.embedding(normalize_uint8(x, loaded.meta)).numpy()
    loaded.warm_up()
    assert loaded._graph is not None  # the fast path is really taken
    np.testing.assert_allclose(loaded.embed_tensor(x), expect, atol=1e-6)  # 8 + 8 + 5
    np.testing.assert_allclose(loaded.embed_tensor(x[:3]), expect[:3], atol=1e-6)
    assert loaded.embed_tensor(x[:0]).shape == (0, 16)


def test_a_model_that_cannot_be_traced_still_encodes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_tiny_checkpoint(tmp_path / "m.pt", "m", embedding_dim=8)
    loaded = load_checkpoint(tmp_path / "m.pt", device="cpu")

    def refuse(*_a: object, **_k: object) -> None:
        raise RuntimeError("not traceable")

    monkeypatch.setattr(torch.jit, "trace", refuse)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    got = loaded.embed_tensor(x)
    from models.preprocess import normalize_uint8

    with torch.inference_mode():
        expect = loaded.model.embedding(normalize_uint8(x, loaded.meta)).numpy()
    assert loaded._graph is None and loaded._graph_failed
    np.testing.assert_allclose(got, expect, atol=1e-6)


def test_classifier_weights_reproduce_model_logits(tmp_path: Path) -> None:
    make_tiny_checkpoint(tmp_path / "m.pt", "m", embedding_dim=8, num_classes=7)
    loaded = load_checkpoint(tmp_path / "m.pt", device="cpu")
    w, b = loaded.classifier_weights()
    assert w.shape == (7, 8) and b.shape == (7,)
    x = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    v = loaded.embed_tensor(x)
    from models.preprocess import normalize_uint8

    with torch.no_grad():
        _, logits = loaded.model(normalize_uint8(x, loaded.meta))
    np.testing.assert_allclose(v @ w.T + b, logits.numpy(), atol=1e-4)


def test_meta_supports_more_heads_and_extra(tmp_path: Path) -> None:
    model = create_model("conv4", 12, 3)
    meta = ModelMeta("n", "conv4", 12, 3, "ract", "o", heads=["embedding", "native"], extra={"tau": 0.05})
    saved = save_checkpoint(model, meta, tmp_path / "n.pt")
    again = read_meta(tmp_path / "n.pt")
    assert again == saved and again.heads == ["embedding", "native"] and again.extra == {"tau": 0.05}
    assert {"conv2", "conv4"} <= set(list_architectures())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable"),
        (b"garbage" * 100, "not a readable"),
    ],
)
def test_corrupt_files_raise_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    p = tmp_path / "bad.pt"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(p)


def test_truncated_and_tampered_checkpoints_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.pt"
    make_tiny_checkpoint(good, "g")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "trunc.pt")
    blob = torch.load(good, weights_only=True)
    blob["state_dict"]["embed.bias"] += 1.0
    torch.save(blob, tmp_path / "tampered.pt")
    with pytest.raises(CheckpointError, match="content_hash"):
        load_checkpoint(tmp_path / "tampered.pt")


def test_wrong_format_missing_file_and_bad_meta(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="expected format"):
        load_checkpoint(tmp_path / "other.pt")
    good = tmp_path / "good.pt"
    make_tiny_checkpoint(good, "g")
    blob = torch.load(good, weights_only=True)
    blob["meta"]["arch"] = "resnet9000"
    blob["meta"]["content_hash"] = ""
    torch.save(blob, tmp_path / "arch.pt")
    with pytest.raises(CheckpointError, match="unknown encoder architecture"):
        load_checkpoint(tmp_path / "arch.pt")
    blob["meta"]["arch"] = "conv4"
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(tmp_path / "mismatch.pt")
    blob["meta"]["embedding_dim"] = -1
    torch.save(blob, tmp_path / "dim.pt")
    with pytest.raises(CheckpointError, match="embedding_dim"):
        load_checkpoint(tmp_path / "dim.pt")


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    import argparse

    evil = argparse.Namespace(cmd="rm -rf /")  # any non-allow-listed class would run code on load
    torch.save({"format": "hotrefresh-checkpoint/1", "meta": evil, "state_dict": {}}, tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(tmp_path / "e.pt")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"embedding_dim": 2_000_000_000}, "embedding_dim"),
        ({"embedding_dim": True}, "embedding_dim"),
        ({"num_classes": 10**9}, "num_classes"),
        ({"input_channels": 10**6}, "input_channels"),
        ({"input_size": [10**6, 28]}, "input_size"),
        ({"input_size": ["a", 28]}, "input_size"),
        ({"input_size": [28]}, "input_size"),
        ({"input_size": 28}, "input_size"),
        ({"name": "x" * 10_000}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"arch": ["conv2"]}, "arch"),
        ({"compatible_with": 7}, "compatible_with"),
        ({"arch_options": {"no_such_option": 1}}, "arch_options"),
        ({"arch": "resnet18", "arch_options": {"width": 10**9}}, "arch_options"),
        ({"heads": "embedding"}, "heads"),
        ({"crop_ratio": "1"}, "crop_ratio"),
    ],
)
def test_every_metadata_field_is_bounded_and_named(tmp_path: Path, change: dict, field: str) -> None:
    """Metadata is checked before any module is built: no field can make the loader allocate
    without bound or fail with anything but a CheckpointError naming the field (the API's 422)."""
    good = tmp_path / "good.pt"
    make_tiny_checkpoint(good, "g")
    blob = torch.load(good, weights_only=True)
    blob["meta"].update(change, content_hash="")
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=field) as caught:
        load_checkpoint(tmp_path / "bad.pt")
    assert " at 0x" not in str(caught.value)
