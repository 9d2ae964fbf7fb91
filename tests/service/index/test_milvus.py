"""``service.index.milvus`` against a real Milvus standalone (PyPI's ``milvus`` package): exact
top-k against brute force, moves that keep rollback a switch, idempotent writes, refusals, and
a server that is away (the SIGKILL and restart of a real one mid-upgrade, under the API's live
client: tests/e2e/test_milvus_backend.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from service.errors import DependencyDown
from service.index.errors import DimensionError
from service.index.milvus import MilvusConfig, MilvusIndexError, MilvusSpaces, collection_name
from tests.utils.servers import OwnMilvus

pytestmark = pytest.mark.integration


def _unit(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture
def spaces(milvus_server: OwnMilvus) -> Iterator[MilvusSpaces]:
    s = MilvusSpaces(MilvusConfig(uri=milvus_server.uri, prefix=f"t{uuid.uuid4().hex[:10]}"))
    yield s
    for name in s._client.list_collections():
        if name.startswith(s.config.prefix + "_"):
            s._client.drop_collection(name)
    s.close()


def _brute(queries: np.ndarray, ids: np.ndarray, vecs: np.ndarray, k: int) -> list[set[int]]:
    scores = queries @ vecs.T
    return [set(ids[np.argsort(-row)[:k]].tolist()) for row in scores]


def test_top_k_of_each_space_equals_brute_force(spaces: MilvusSpaces) -> None:
    rng = np.random.default_rng(0)
    old_ids, new_ids = np.arange(1, 401), np.arange(1000, 1300)
    old, new = _unit(rng, 400, 16), _unit(rng, 300, 24)  # spaces of different dimensions
    spaces.ensure("old", 16)
    spaces.ensure("new", 24)
    spaces.upsert("old", old_ids, old)
    spaces.upsert("new", new_ids, new)
    for model, ids, vecs, d in (("old", old_ids, old, 16), ("new", new_ids, new, 24)):
        q = _unit(rng, 7, d)
        got_ids, got_scores = spaces.search(model, q, 10)  # one batched call for 7 queries
        assert got_ids.shape == (7, 10)
        assert [set(r.tolist()) for r in got_ids] == _brute(q, ids, vecs, 10)
        np.testing.assert_allclose(got_scores[:, 0], (q @ vecs.T).max(1), atol=1e-5)
    assert spaces.count("old") == 400 and spaces.count("new") == 300


def test_a_move_hides_the_old_row_for_its_upgrade_only_and_rollback_is_a_switch(spaces: MilvusSpaces) -> None:
    rng = np.random.default_rng(1)
    ids = np.arange(1, 101)
    old, new = _unit(rng, 100, 8), _unit(rng, 100, 8)
    spaces.ensure("old", 8)
    spaces.ensure("new", 8)
    spaces.upsert("old", ids, old)
    moved = ids[:30]
    spaces.upsert("new", moved, new[:30])
    spaces.upsert("old", moved, old[:30], moved_by=7)  # upgrade 7 moved them; the old vectors stay
    assert spaces.count("old", live_for=7) == 70 and spaces.count("old") == 100
    hits, _ = spaces.search("old", old[:30], 1, hide_moved_by=7)
    assert not set(hits[:, 0].tolist()) & set(moved.tolist())  # each moved item's own vector is hidden
    # Rolled back: the old space searched with no filter finds every item by its own vector again.
    hits, _ = spaces.search("old", old, 1)
    assert hits[:, 0].tolist() == ids.tolist()
    # A later upgrade does not see what upgrade 7 marked.
    assert spaces.count("old", live_for=8) == 100


def test_writes_are_idempotent_and_deletes_remove(spaces: MilvusSpaces) -> None:
    rng = np.random.default_rng(2)
    ids, vecs = np.arange(5, 25), _unit(rng, 20, 8)
    spaces.ensure("m", 8)
    spaces.upsert("m", ids, vecs)
    spaces.upsert("m", ids, vecs)
    assert spaces.count("m") == 20
    spaces.delete("m", ids[:5])
    spaces.delete("m", ids[:5])
    assert spaces.count("m") == 15
    hits, _ = spaces.search("m", vecs[:5], 20)
    assert not set(hits.ravel().tolist()) & set(ids[:5].tolist())
    spaces.drop("m")
    assert spaces.count("m") == 0 and spaces.dim("m") is None


def test_refusals_are_clear_and_leave_nothing(spaces: MilvusSpaces, milvus_server: OwnMilvus) -> None:
    spaces.ensure("m", 8)
    with pytest.raises(DimensionError, match="8-d"):
        spaces.ensure("m", 16)
    with pytest.raises(DimensionError):
        spaces.upsert("m", [1], np.ones((1, 4), np.float32))
    with pytest.raises(MilvusIndexError, match="unknown Milvus index type"):
        MilvusConfig(uri=milvus_server.uri, index_type="NOPE")
    # A GPU index type on a CPU server: refused by the server when the collection is made.
    gpu = MilvusSpaces(MilvusConfig(uri=milvus_server.uri, prefix=spaces.config.prefix, index_type="GPU_CAGRA"))
    try:
        with pytest.raises(MilvusIndexError, match="GPU_CAGRA"):
            gpu.ensure("g", 8)
        assert gpu.dim("g") is None  # no half-made collection left behind
    finally:
        gpu.close()
    assert collection_name("p", "a-b") != collection_name("p", "a_b")


def test_an_unreachable_server_is_a_dependency_error_naming_milvus() -> None:
    from cli.launcher import free_port

    with pytest.raises(DependencyDown, match="milvus unavailable"):
        MilvusSpaces(MilvusConfig(uri=f"http://127.0.0.1:{free_port()}", timeout_s=2)).count("m")
