"""Snapshots: a round trip restores the same items, models, parked vectors and version, into any
backend; a broken snapshot is refused with a clear error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.index import MixedIndex, QueryPlan, SnapshotError
from service.index.flat import FlatBackend
from service.index.ivf import IVFBackend
from service.index.torch_backend import TorchBackend
from tests.utils.index import unit_vectors

D = 12


def _built() -> tuple[MixedIndex, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    ids = np.arange(500, dtype=np.int64) * 3
    old = unit_vectors(rng, 500, D)
    idx = MixedIndex(FlatBackend)
    idx.add("old", ids, old)
    idx.move(ids[:200], "new", unit_vectors(rng, 200, D))
    idx.delete(ids[400:410])
    return idx, ids, old


@pytest.mark.parametrize(
    "backend",
    [
        FlatBackend,
        lambda d: TorchBackend(d, device="cpu"),
        lambda d: IVFBackend(d, nlist=4, nprobe=4, train_size=100),
    ],
    ids=["flat", "torch-cpu", "ivf"],
)
def test_round_trip(tmp_path: Path, backend) -> None:
    idx, ids, old = _built()
    manifest = json.loads(idx.save(tmp_path).read_text())
    assert manifest["version"] == idx.version and {s["model"] for s in manifest["segments"]} == {"old", "new"}
    back = MixedIndex.load(tmp_path, backend)
    assert back.version == idx.version
    assert back.counts() == idx.counts() and back.parked_counts() == idx.parked_counts()
    assert back.model_of(ids) == idx.model_of(ids)
    q = unit_vectors(np.random.default_rng(0), 4, D)
    a, b = idx.search_arrays(QueryPlan.single(q), k=10), back.search_arrays(QueryPlan.single(q), k=10)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    # parked vectors survived: rollback after a restart needs no re-encoding
    assert back.rollback("old") == 200
    hits = back.search(old[:5], k=1)
    assert [h[0].id for h in hits] == ids[:5].tolist() and all(h[0].model == "old" for h in hits)


def test_resave_replaces_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    idx, ids, _ = _built()
    idx.save(tmp_path)
    (tmp_path / "notes.txt").write_text("not ours")
    idx.delete(ids[:5])
    idx.save(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert not [n for n in names if n.endswith(".tmp")]
    assert "notes.txt" in names
    assert all(n.startswith(f"v{idx.version}-") for n in names if n.endswith(".npy"))
    assert MixedIndex.load(tmp_path, FlatBackend).counts() == idx.counts()


def test_broken_snapshots_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SnapshotError):
        MixedIndex.load(tmp_path / "missing", FlatBackend)
    idx, _, _ = _built()
    manifest_path = idx.save(tmp_path)
    manifest = json.loads(manifest_path.read_text())
    manifest["segments"][0]["count"] += 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="manifest says"):
        MixedIndex.load(tmp_path, FlatBackend)
    manifest["segments"][0]["count"] -= 1
    manifest["format"] = "something-else"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match="format"):
        MixedIndex.load(tmp_path, FlatBackend)
    manifest["format"] = "hotrefresh-index/1"
    (tmp_path / manifest["segments"][1]["files"]["vectors"]).unlink()
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError):
        MixedIndex.load(tmp_path, FlatBackend)
