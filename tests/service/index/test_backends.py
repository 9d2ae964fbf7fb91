"""Each segment backend against brute force: add, remove (swap-compaction), search, save/load."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.index import (
    DimensionError,
    DuplicateIdError,
    IndexInputError,
    UnknownIdError,
    VectorBackend,
    create_backend,
    cuda_available,
)
from service.index.flat import FlatBackend
from service.index.ivf import IVFBackend
from service.index.torch_backend import TorchBackend
from tests.utils.index import brute_topk_scores, unit_vectors

DIM = 16

BACKENDS: dict[str, Callable[[int], VectorBackend]] = {
    "flat": FlatBackend,
    "torch-cpu": lambda d: TorchBackend(d, device="cpu"),
    # nprobe == nlist makes IVF exact, so it can be held to brute force; trains at 400 vectors
    "ivf": lambda d: IVFBackend(d, nlist=8, nprobe=8, train_size=400),
}


@pytest.fixture(params=list(BACKENDS))
def make(request: pytest.FixtureRequest) -> Callable[[int], VectorBackend]:
    return BACKENDS[request.param]


def _check_search(b: VectorBackend, ref: dict[int, np.ndarray], queries: np.ndarray, k: int) -> None:
    ids = np.array(sorted(ref))
    vecs = np.stack([ref[i] for i in ids])
    scores, got = b.search(queries, k)
    np.testing.assert_allclose(scores, brute_topk_scores(queries, vecs, k), atol=1e-4)
    for q, srow, irow in zip(queries, scores, got, strict=True):
        assert len(set(irow.tolist())) == len(irow)
        for s, i in zip(srow, irow, strict=True):
            assert abs(float(q @ ref[int(i)]) - s) < 1e-4


def test_add_remove_search_against_brute_force(make: Callable[[int], VectorBackend]) -> None:
    rng = np.random.default_rng(0)
    b = make(DIM)
    x = unit_vectors(rng, 1000, DIM)
    ids = rng.permutation(10_000)[:1000].astype(np.int64)
    b.add(ids[:600], x[:600])
    b.add(ids[600:], x[600:])
    ref = {int(i): v for i, v in zip(ids, x, strict=True)}
    q = unit_vectors(rng, 7, DIM)
    _check_search(b, ref, q, 10)

    gone = rng.choice(ids, 300, replace=False)
    removed = b.remove(gone)
    np.testing.assert_array_equal(removed, np.stack([ref[int(i)] for i in gone]))
    for i in gone:
        del ref[int(i)]
    assert b.count() == 700
    assert sorted(b.ids().tolist()) == sorted(ref)
    assert not b.contains(gone).any()
    np.testing.assert_array_equal(b.vectors(np.array(list(ref)[:5])), np.stack(list(ref.values())[:5]))
    _check_search(b, ref, q, 10)
    _check_search(b, ref, q, 5000)  # k beyond the count returns everything


def test_bad_input_changes_nothing(make: Callable[[int], VectorBackend]) -> None:
    rng = np.random.default_rng(1)
    b = make(DIM)
    b.add(np.arange(10), unit_vectors(rng, 10, DIM))
    before = (b.count(), sorted(b.ids().tolist()))
    with pytest.raises(DuplicateIdError):
        b.add(np.array([5, 50]), unit_vectors(rng, 2, DIM))
    with pytest.raises(DuplicateIdError):
        b.add(np.array([60, 60]), unit_vectors(rng, 2, DIM))
    with pytest.raises(DimensionError):
        b.add(np.array([70]), unit_vectors(rng, 1, DIM + 1))
    with pytest.raises(IndexInputError):
        b.add(np.array([71, 72]), unit_vectors(rng, 3, DIM))
    with pytest.raises(IndexInputError):
        b.add(np.array([-3]), unit_vectors(rng, 1, DIM))
    with pytest.raises(IndexInputError):
        b.add(np.array([80]), np.full((1, DIM), np.nan, dtype=np.float32))
    with pytest.raises(UnknownIdError):
        b.remove(np.array([1, 99]))
    assert (b.count(), sorted(b.ids().tolist())) == before


def test_save_load_round_trip_and_across_backends(make: Callable[[int], VectorBackend], tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    b = make(DIM)
    x = unit_vectors(rng, 500, DIM)
    b.add(np.arange(500), x)
    b.remove(np.arange(0, 500, 7))
    files = b.save(tmp_path, "seg")
    ids, vecs = b.export()
    q = unit_vectors(rng, 4, DIM)
    for other in (make(DIM), FlatBackend(DIM)):
        other.load(tmp_path, files)
        assert sorted(other.ids().tolist()) == sorted(ids.tolist())
        _check_search(other, dict(zip(ids.tolist(), vecs, strict=True)), q, 10)
        other.remove(np.array([1, 2]))  # still mutable after load
    assert not list(tmp_path.glob("*.tmp"))


def test_ivf_trains_once_and_moves_by_hashtable() -> None:
    rng = np.random.default_rng(3)
    b = IVFBackend(DIM, nlist=4, nprobe=4, train_size=200)
    b.add(np.arange(150), unit_vectors(rng, 150, DIM))
    assert not b.trained  # exact until it has enough vectors to train on
    b.add(np.arange(150, 300), unit_vectors(rng, 150, DIM))
    assert b.trained
    import faiss

    assert b._index is not None and b._index.direct_map.type == faiss.DirectMap.Hashtable
    b.remove(np.arange(0, 300, 2))
    assert b.count() == 150
    b.add(np.arange(1000, 1010), unit_vectors(rng, 10, DIM))
    assert b.contains(np.array([1000, 1, 2])).tolist() == [True, True, False]


def test_create_backend_choices() -> None:
    assert create_backend("flat", 8).kind == "flat"
    assert create_backend("ivf", 8, nlist=2, nprobe=2).kind == "ivf"
    with pytest.raises(IndexInputError):
        create_backend("annoy", 8)
    with pytest.raises(IndexInputError):
        create_backend("flat", 0)
    assert create_backend("auto", 8, device="cpu").kind == "flat"
    if cuda_available():
        assert create_backend("auto", 8).kind == "gpu"
    else:
        assert create_backend("auto", 8).kind == "flat"
        with pytest.raises(IndexInputError, match="CUDA"):
            create_backend("gpu", 8)


@pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")
def test_gpu_backend_matches_flat() -> None:
    rng = np.random.default_rng(4)
    x = unit_vectors(rng, 2000, DIM)
    gpu, cpu = create_backend("gpu", DIM), FlatBackend(DIM)
    for b in (gpu, cpu):
        b.add(np.arange(2000), x)
        b.remove(np.arange(0, 2000, 3))
    q = unit_vectors(rng, 5, DIM)
    np.testing.assert_allclose(gpu.search(q, 10)[0], cpu.search(q, 10)[0], atol=1e-4)
