"""The old->new map a new model carries from its training (models/carried_map.py): fitted from
both models' embeddings of the same images, stored in the metadata, read back checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.carried_map import KEY, CarriedMap, CarriedMapError, carried_map, fit_carried_map
from models.checkpoint import read_meta
from models.plans.linear_map import MIN_PAIRS, LinearMap


class LinearEmbedder:
    """A fake encoder: flattened pixels through a fixed matrix (a unit test's stand-in)."""

    def __init__(self, w: np.ndarray) -> None:
        self.w = w

    def embed_tensor(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32).reshape(len(x), -1) @ self.w


def test_fit_recovers_the_map_between_two_encoders_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    w_old = rng.normal(size=(16, 6)).astype(np.float32)
    t_true = rng.normal(size=(6, 5)).astype(np.float32)
    old, new = LinearEmbedder(w_old), LinearEmbedder(w_old @ t_true)  # new = old through T exactly
    images = rng.integers(0, 255, size=(300, 4, 4), dtype=np.uint8)
    carried = fit_carried_map(old, new, images, from_model="m-old", from_hash="abc", pairs=200)
    assert carried is not None and carried.map.pairs == 200 and carried.map.weight.shape == (6, 5)
    probe = old.embed_tensor(images[:20])
    np.testing.assert_allclose(carried.map.apply(probe), new.embed_tensor(images[:20]), rtol=1e-2, atol=1e-2)
    back = carried_map({KEY: carried.to_dict(), "other": 1})
    assert back is not None and (back.from_model, back.from_hash) == ("m-old", "abc")
    np.testing.assert_array_equal(back.map.weight, carried.map.weight)


def test_too_few_images_fit_no_map_and_no_map_reads_as_none() -> None:
    enc = LinearEmbedder(np.eye(4, dtype=np.float32))
    few = np.zeros((MIN_PAIRS - 1, 2, 2), np.uint8)
    assert fit_carried_map(enc, enc, few, from_model="a", from_hash="h") is None
    assert carried_map(None) is None and carried_map({"recipe": {}}) is None


@pytest.mark.parametrize(
    "bad",
    [
        "not an object",
        {"from_model": "a", "from_hash": "h", "kind": "lstsq", "pairs": 40, "shape": [2, 2]},  # no weights
        {"from_model": "a", "from_hash": "h", "kind": "magic", "pairs": 40, "shape": [1, 1], "weight_b64": "AACAPw=="},
        {"from_model": "a", "from_hash": "h", "kind": "lstsq", "pairs": 40, "shape": [2, 2], "weight_b64": "AACAPw=="},
        {"from_model": "a", "from_hash": "h", "kind": "lstsq", "pairs": 40, "shape": [1, 1], "weight_b64": "AADAfw=="},
        {"from_model": "a", "from_hash": "h", "kind": "lstsq", "pairs": 40, "shape": [0, 1], "weight_b64": ""},
    ],
)
def test_a_bad_stored_map_is_a_clear_error(bad: object) -> None:
    with pytest.raises(CarriedMapError, match=KEY):
        carried_map({KEY: bad})


def test_a_good_stored_map_of_one_value_reads() -> None:
    d = {"from_model": "a", "from_hash": "h", "kind": "lstsq", "pairs": 40, "shape": [1, 1], "weight_b64": "AACAPw=="}
    got = CarriedMap.from_dict(d)
    assert got.map == LinearMap(got.map.weight, "lstsq", 40) and float(got.map.weight[0, 0]) == 1.0


def test_training_a_new_model_beside_an_old_one_stores_the_map(trained_pair: tuple[Path, Path]) -> None:
    """``hotrefresh train --old``: the checkpoint carries a map from exactly the old model's weights."""
    old_meta, new_meta = read_meta(trained_pair[0]), read_meta(trained_pair[1])
    carried = carried_map(new_meta.extra)
    assert carried is not None
    assert (carried.from_model, carried.from_hash) == (old_meta.name, old_meta.content_hash)
    assert carried.map.weight.shape == (old_meta.embedding_dim, new_meta.embedding_dim)
    assert carried_map(old_meta.extra) is None  # an old (CE) model is trained beside nothing


def test_an_exported_torchscript_encoder_carries_the_map(trained_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """``hotrefresh export``: the map goes into the TorchScript metadata and comes back on load."""
    from models.torchscript import export_torchscript, load_torchscript

    doc = export_torchscript(trained_pair[1], tmp_path / "enc.pt", name="enc")
    assert KEY in doc["extra"]
    loaded = carried_map(load_torchscript(tmp_path / "enc.pt", device="cpu").meta.extra)
    original = carried_map(read_meta(trained_pair[1]).extra)
    assert loaded is not None and original is not None and loaded.from_hash == original.from_hash
    np.testing.assert_array_equal(loaded.map.weight, original.map.weight)


def test_a_bad_map_in_torchscript_metadata_is_refused_naming_it(trained_pair: tuple[Path, Path]) -> None:
    from models.checkpoint import CheckpointError
    from models.torchscript import export_metadata, metadata_meta

    doc = export_metadata(read_meta(trained_pair[1]))
    doc["extra"] = {KEY: {"shape": [1, 1]}}
    with pytest.raises(CheckpointError, match=f"enc.json: {KEY} is not a usable map"):
        metadata_meta(doc, "enc.json")
