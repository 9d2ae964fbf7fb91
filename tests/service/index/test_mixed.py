"""MixedIndex: moves, rollback, delete, drop, query plans and the one-live-vector invariant,
held to brute force on synthetic data."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from models.plans import Calibration
from service.index import (
    DimensionError,
    DuplicateIdError,
    IndexInputError,
    MixedIndex,
    QueryPlan,
    SegmentQuery,
    UnknownIdError,
    UnknownSegmentError,
    VectorBackend,
    cuda_available,
)
from service.index.flat import FlatBackend
from service.index.ivf import IVFBackend
from service.index.torch_backend import TorchBackend
from service.index.validation import MAX_K
from tests.utils.index import assert_matches_brute, unit_vectors

D = 16
FACTORIES: dict[str, Callable[[int], VectorBackend]] = {
    "flat": FlatBackend,
    "torch-cpu": lambda d: TorchBackend(d, device="cpu"),
    "ivf": lambda d: IVFBackend(d, nlist=4, nprobe=4, train_size=150),
}


CUDA = pytest.mark.skipif(not cuda_available(), reason="needs a CUDA device")


@pytest.fixture(params=[*FACTORIES, pytest.param("cuda", marks=CUDA)])
def factory(request: pytest.FixtureRequest) -> Callable[[int], VectorBackend]:
    if request.param == "cuda":
        return lambda d: TorchBackend(d, device="cuda")
    return FACTORIES[request.param]


def _gallery(factory: Callable[[int], VectorBackend], n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    idx = MixedIndex(factory)
    ids = np.arange(100, 100 + n, dtype=np.int64)
    old = unit_vectors(rng, n, D)
    idx.add("old", ids, old)
    live = {int(i): ("old", v) for i, v in zip(ids, old, strict=True)}
    return idx, ids, old, live, rng


def _check_invariants(idx: MixedIndex, live: dict[int, tuple[str, np.ndarray]], rng: np.random.Generator) -> None:
    assert len(idx) == len(live)
    assert idx.model_of(list(live)) == [m for m, _ in live.values()]
    counts = idx.counts()
    for model in {m for m, _ in live.values()}:
        assert counts[model] == sum(1 for m, _ in live.values() if m == model)
    if live:
        q = unit_vectors(rng, 5, D)
        assert_matches_brute(idx.search(QueryPlan.single(q), k=12), q, live, 12)
        # every item's own vector finds it first (random unit vectors: self-similarity 1 wins)
        some = list(live)[:: max(1, len(live) // 20)]
        own = np.stack([live[i][1] for i in some])
        for i, row in zip(some, idx.search(own, k=1), strict=True):
            assert row[0].id == i and row[0].model == live[i][0]


def test_paper_plan_over_two_segments_matches_brute_force(factory: Callable[[int], VectorBackend]) -> None:
    idx, ids, old, live, rng = _gallery(factory)
    moved = ids[::2]
    new = unit_vectors(rng, len(moved), D)
    idx.move(moved, "new", new)
    for i, v in zip(moved, new, strict=True):
        live[int(i)] = ("new", v)
    q = unit_vectors(rng, 6, D)
    assert_matches_brute(idx.search(QueryPlan.single(q), k=15), q, live, 15)
    assert_matches_brute(idx.search(QueryPlan.single(q, ["old", "new"]), k=15), q, live, 15)
    assert_matches_brute(idx.search(q, k=len(live) + 50), q, live, len(live) + 50)  # k > N: all
    assert idx.counts() == {"old": 200, "new": 200}
    assert idx.parked_counts() == {"old": 200}


def test_random_moves_deletes_rollback_keep_one_live_vector_per_id(
    factory: Callable[[int], VectorBackend],
) -> None:
    idx, ids, old, live, rng = _gallery(factory, seed=1)
    old_vec = {int(i): v for i, v in zip(ids, old, strict=True)}
    for step in range(12):
        alive = np.array(sorted(live))
        batch = rng.choice(alive, 25, replace=False)
        if step % 4 == 3:
            idx.delete(batch)
            for i in batch:
                del live[int(i)]
        else:
            vecs = unit_vectors(rng, len(batch), D)
            idx.move(batch, "new", vecs)  # some are already on "new": their vector is replaced
            for i, v in zip(batch, vecs, strict=True):
                live[int(i)] = ("new", v)
        _check_invariants(idx, live, rng)
    v0 = idx.version
    moved_back = idx.rollback("old")
    assert idx.version == v0 + 1
    assert moved_back == sum(1 for m, _ in live.values() if m == "new")
    live = {i: ("old", old_vec[i]) for i in live}  # exactly the old vectors, deleted items stay gone
    _check_invariants(idx, live, rng)
    assert idx.counts()["new"] == 0 and idx.parked_counts() == {}
    idx.drop_segment("new")
    assert idx.models() == ["old"]


def test_commit_drops_old_segment_and_parked_vectors() -> None:
    idx, ids, _, live, rng = _gallery(FlatBackend, n=50)
    with pytest.raises(IndexInputError, match="live items"):
        idx.drop_segment("old")
    new = unit_vectors(rng, 50, D)
    idx.move(ids, "new", new)
    idx.drop_segment("old")
    assert idx.models() == ["new"] and idx.parked_counts() == {}
    with pytest.raises(UnknownSegmentError):
        idx.rollback("old")
    with pytest.raises(UnknownSegmentError):
        idx.drop_segment("old")
    assert idx.rollback("new") == 0
    idx.drop_segment("new", force=True)
    assert len(idx) == 0 and idx.search(new[:2], k=3) == [[], []]


def test_move_back_and_forth_without_rollback() -> None:
    idx, ids, old, live, rng = _gallery(FlatBackend, n=20)
    b = ids[:5]
    nv = unit_vectors(rng, 5, D)
    idx.move(b, "new", nv)
    idx.move(b, "old", old[:5])  # back by hand: the parked copy is superseded
    assert idx.parked_counts() == {"old": 0, "new": 5}
    idx.move(b, "new", nv)  # and forth again: no duplicate parked vector
    assert idx.rollback("old") == 5
    for i, v in zip(ids, old, strict=True):
        live[int(i)] = ("old", v)
    _check_invariants(idx, live, rng)


def test_plan_with_per_segment_embeddings_dimensions_and_calibration() -> None:
    rng = np.random.default_rng(5)
    idx = MixedIndex(FlatBackend)
    a, b = unit_vectors(rng, 60, 8), unit_vectors(rng, 40, 24)
    idx.add("small", np.arange(60), a)
    idx.add("big", np.arange(60, 100), b)
    qa, qb = unit_vectors(rng, 3, 8), unit_vectors(rng, 3, 24)
    # (s - 0.25) / 0.5 = 2 s - 0.5 and (s + 0.25) / 1 = s + 0.25
    plan = QueryPlan.of(
        [SegmentQuery("small", qa, Calibration(0.25, 0.5)), SegmentQuery("big", qb, Calibration(-0.25))]
    )
    got = idx.search(plan, k=20)
    calibrated = np.concatenate([2.0 * (qa @ a.T) - 0.5, qb @ b.T + 0.25], axis=1)
    expected = -np.sort(-calibrated, axis=1)[:, :20]
    for row, exp, full in zip(got, expected, calibrated, strict=True):
        np.testing.assert_allclose([h.score for h in row], exp, atol=1e-5)
        for h in row:
            assert h.model == ("small" if h.id < 60 else "big")
            assert abs(full[h.id] - h.score) < 1e-5
    with pytest.raises(DimensionError):
        idx.search(QueryPlan.single(qa), k=5)  # one 8-d embedding cannot score the 24-d segment
    arrays = idx.search_arrays(plan, k=200)
    assert (arrays.ids[:, 100:] == -1).all() and np.isneginf(arrays.scores[:, 100:]).all()


def test_bad_requests_raise_clear_errors_and_change_nothing() -> None:
    idx, ids, old, live, rng = _gallery(FlatBackend, n=30)
    idx.move(ids[:10], "new", unit_vectors(rng, 10, D))
    state = (idx.version, idx.counts(), idx.parked_counts(), idx.model_of(ids))

    cases = [
        (DuplicateIdError, lambda: idx.add("old", [ids[20], 999], unit_vectors(rng, 2, D))),
        (DuplicateIdError, lambda: idx.add("new", [ids[0]], unit_vectors(rng, 1, D))),  # live elsewhere
        (DuplicateIdError, lambda: idx.add("old", [5000, 5000], unit_vectors(rng, 2, D))),
        (DuplicateIdError, lambda: idx.move([ids[11], ids[11]], "new", unit_vectors(rng, 2, D))),
        (DimensionError, lambda: idx.add("old", [5001], unit_vectors(rng, 1, D + 2))),
        (DimensionError, lambda: idx.move([ids[12]], "new", unit_vectors(rng, 1, D - 1))),
        (UnknownIdError, lambda: idx.move([ids[13], 424242], "new", unit_vectors(rng, 2, D))),
        (UnknownIdError, lambda: idx.delete([ids[14], 424242])),
        (IndexInputError, lambda: idx.move([ids[15]], "new", unit_vectors(rng, 2, D))),
        (IndexInputError, lambda: idx.add("", [5002], unit_vectors(rng, 1, D))),
        (IndexInputError, lambda: idx.search(old[:1], k=0)),
        (IndexInputError, lambda: idx.search(old[:1], k=MAX_K + 1)),
        (IndexInputError, lambda: idx.search(old[:1], k=2.5)),  # type: ignore[arg-type]
        (DimensionError, lambda: idx.search(np.ones((1, D + 1), dtype=np.float32), k=3)),
        (UnknownSegmentError, lambda: idx.search(QueryPlan.single(old[:1], ["old", "nope"]), k=3)),
        (IndexInputError, lambda: SegmentQuery("old", old[:1], Calibration(scale=-1.0))),
        (IndexInputError, lambda: QueryPlan.of([SegmentQuery("old", old[:1]), SegmentQuery("new", old[:2])])),
        (IndexInputError, lambda: QueryPlan.of([])),
        (UnknownSegmentError, lambda: idx.rollback("nope")),
        (UnknownSegmentError, lambda: idx.drop_segment("nope")),
        (UnknownSegmentError, lambda: idx.vectors("nope", [ids[0]])),
        (UnknownIdError, lambda: idx.vectors("old", [ids[0]])),  # it lives on "new" now
    ]
    for exc, call in cases:
        with pytest.raises(exc):
            call()
        assert (idx.version, idx.counts(), idx.parked_counts(), idx.model_of(ids)) == state
    assert issubclass(UnknownIdError, ValueError)  # one except clause turns all of them into a 4xx


def test_model_of_single_and_many() -> None:
    idx, ids, _, _, rng = _gallery(FlatBackend, n=5)
    idx.move(ids[:1], "new", unit_vectors(rng, 1, D))
    assert idx.model_of(int(ids[0])) == "new"
    assert idx.model_of(np.int64(ids[1])) == "old"
    assert idx.model_of(777) is None
    assert idx.model_of([int(ids[0]), 777, int(ids[2])]) == ["new", None, "old"]


def test_upsert_and_missing_ok_delete_make_log_replay_idempotent() -> None:
    idx, ids, old, live, rng = _gallery(FlatBackend, n=20)
    nv = unit_vectors(rng, 10, D)
    batch = np.concatenate([ids[:5], np.arange(900, 905)])  # 5 live on "old", 5 new ids
    for _ in range(2):  # applying the same log entry twice leaves the same state
        idx.upsert("new", batch, nv)
        assert idx.counts() == {"old": 15, "new": 10} and idx.parked_counts() == {"old": 5}
    for i, v in zip(batch, nv, strict=True):
        live[int(i)] = ("new", v)
    _check_invariants(idx, live, rng)
    with pytest.raises(DimensionError):
        idx.upsert("new", [901, 906], unit_vectors(rng, 2, D + 1))
    idx.delete([int(ids[7]), 424242], missing_ok=True)
    idx.delete([int(ids[7])], missing_ok=True)
    del live[int(ids[7])]
    _check_invariants(idx, live, rng)
    assert idx.rollback("old") == 5  # the 5 ids added by upsert have no old vector and stay
    assert idx.counts() == {"old": 19 - 5 + 5, "new": 5}
