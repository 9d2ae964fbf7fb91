"""The upgrade lifecycle in one process, without Celery: scoring, the drain loop, failures,
idempotence, transitions, a lost queue. Real SQLite/PostgreSQL, real Redis, real images and
real (tiny) encoders; Celery and multiple processes are in test_worker_processes.py."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from sqlalchemy import func, select, update

from service import indexlog
from service.db.schema import BackfillTask, Embedding, Upgrade
from service.db.session import session_scope
from service.queue import BackfillQueue
from service.repositories import catalog, common, upgrades
from service.states import TransitionError
from service.upgrade import control
from tests.utils.upgrade import models_of, run_to_end, start_and_score
from workers.drain import drain

pytestmark = pytest.mark.integration


def test_full_upgrade_moves_every_item_once_and_measures(make_gallery) -> None:
    g = make_gallery(n=80)
    g.settings.__dict__["batch_size"] = 16
    ctx, uid = start_and_score(g, strategy="margin", batch_size=16)
    with session_scope(ctx.url) as s:
        serving = catalog.get_serving_state(s)
        assert (serving.query_model, serving.gallery_model) == (g.new, g.new)  # the hot refresh
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "running" and up.total == 80
        assert up.baseline["old_map"] is not None and len(up.baseline["probe_ids"]) == 80
        assert up.checkpoints[0]["fraction"] == 0.0 and up.checkpoints[0]["nfr"] is not None
        # the queue holds every item, highest priority first, matching SQL
        prio = dict(upgrades.pending_after(s, uid, None, 1000))
    q = BackfillQueue(ctx.redis, g.settings, uid)
    assert q.depth() == g.settings.queue_window < 80  # Redis holds the top of the queue only
    first = q.lease(5, 60)
    assert [prio[i] for i in first] == sorted((prio[i] for i in first), reverse=True)
    assert min(prio[i] for i in first) >= max(p for i, p in prio.items() if i not in first)
    q.release(first)

    run_to_end(ctx, uid)
    with session_scope(ctx.url) as s:
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "completed" and up.done == 80 and up.failed == 0
        counts = upgrades.task_counts(s, uid)
        assert counts == {"pending": 0, "done": 80, "failed": 0, "mapped": 0}
        # both vectors kept until commit (rollback stays instant)
        per_model = dict(s.execute(select(Embedding.model, func.count()).group_by(Embedding.model)).all())
        assert per_model == {g.old: 80, g.new: 80}
        steps = [c["step"] for c in up.checkpoints]
        assert steps[0] == 0 and steps[-1] == -1 and len(steps) >= 3
        assert up.checkpoints[-1]["fraction"] == 1.0
    assert models_of(ctx.url) == {g.new: 80}
    assert q.is_empty()
    moved = [
        i for e in indexlog.read_after(ctx.redis, g.settings, "0-0", count=10_000) if e.op == "move" for i in e.ids
    ]
    assert sorted(moved) == sorted(g.ids)  # every item moved exactly once in the log

    # replaying a landed batch (a worker killed after commit, before ack) counts nothing twice
    # and leaves one vector per item, the replay's (a re-encoding on another device may differ
    # in the last bits)
    with session_scope(ctx.url) as s:
        up = upgrades.get_upgrade(s, uid)
        up.state = "running"
        s.flush()
        ids = g.ids[:10]
        vecs = -np.stack([common.vector_from_bytes(s.get(Embedding, (i, g.new)).vector) for i in ids])
        out = upgrades.record_encoded(s, uid, g.new, ids, vecs)
        assert out.newly_done == 0 and sorted(out.moved) == sorted(ids)
        assert upgrades.get_upgrade(s, uid).done == 80
    with session_scope(ctx.url) as s:
        rows = s.execute(
            select(Embedding.item_id, Embedding.vector).where(Embedding.model == g.new, Embedding.item_id.in_(ids))
        ).all()
        assert len(rows) == len(ids)
        stored = {int(i): common.vector_from_bytes(v) for i, v in rows}
        assert np.array_equal(np.stack([stored[int(i)] for i in ids]), vecs)

    # commit retires the old model
    with session_scope(ctx.url) as s:
        upgrades.get_upgrade(s, uid).state = "completed"
    assert control.act(g.settings, ctx.redis, uid, "commit") == "committed"
    with session_scope(ctx.url) as s:
        assert s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model == g.old)) == 0
    with pytest.raises(TransitionError):
        control.act(g.settings, ctx.redis, uid, "rollback")


@pytest.mark.parametrize("decode_threads", [1, 3])
def test_corrupt_images_fail_after_max_attempts_and_the_rest_completes(make_gallery, decode_threads) -> None:
    g = make_gallery(n=40, corrupt=3)
    g.settings.decode_threads = decode_threads  # 3: each batch's images cut across the loader and two more
    ctx, uid = start_and_score(g, strategy="entropy", batch_size=8)
    run_to_end(ctx, uid)
    with session_scope(ctx.url) as s:
        up = upgrades.get_upgrade(s, uid)
        # the three failed, and were then mapped: none is left on the old model (the row's final
        # counts, written at completion, say so), while the failure table keeps all three
        assert up.state == "completed" and up.done == 37 and up.failed == 0
        failures = upgrades.list_failures(s, uid)
        assert sorted(f.external_id for f in failures) == ["img-0", "img-1", "img-2"]
        assert all(f.attempts == g.settings.max_attempts for f in failures)
        assert "UnidentifiedImageError" in failures[0].error
        # the failed items were given mapped vectors at the end (37 backfilled pairs fit the map)
        assert up.mapped == 3 and upgrades.mapped_among(s, uid, [f.item_id for f in failures]) == set(g.ids[:3])
    assert models_of(ctx.url) == {g.new: 40}
    assert control.act(g.settings, ctx.redis, uid, "commit") == "committed"


def test_lost_redis_queue_is_rebuilt_from_sql(make_gallery) -> None:
    g = make_gallery(n=48)
    ctx, uid = start_and_score(g, strategy="margin", batch_size=8)
    drain(ctx, uid, budget_s=0.01)
    q = BackfillQueue(ctx.redis, g.settings, uid)
    ctx.redis.delete(*q.keys)  # Redis restarted empty
    assert q.is_empty()
    run_to_end(ctx, uid)
    with session_scope(ctx.url) as s:
        assert upgrades.get_upgrade(s, uid).state == "completed"
        assert s.scalar(select(func.count()).select_from(BackfillTask).where(BackfillTask.status == "done")) == 48
    assert models_of(ctx.url) == {g.new: 48}


def test_nfr_guardrail_pauses_the_upgrade(make_gallery) -> None:
    g = make_gallery(n=100)
    g.settings.__dict__["nfr_checkpoint_every"] = 0.2
    # untrained "compatible" models flip many probes: any guardrail below that NFR trips
    ctx, uid = start_and_score(g, strategy="margin", batch_size=10, nfr_guardrail=0.0)
    run_to_end(ctx, uid)
    with session_scope(ctx.url) as s:
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "paused" and "guardrail" in (up.error or "")
        assert up.nfr is not None and up.nfr > 0.0
        assert 0 < up.done < 100


def test_without_labels_live_nfr_is_unavailable_not_zero(make_gallery) -> None:
    from service.metrics import LIVE_NFR

    g = make_gallery(n=30, labeled=False)
    ctx, uid = start_and_score(g, strategy="margin", batch_size=10)
    # The metrics registry is per process: an earlier test's upgrade of the same id (under any
    # plan, a test's own included) may have left series; this upgrade starts from none.
    stale = {s.labels["plan"] for m in LIVE_NFR.collect() for s in m.samples if s.labels.get("upgrade") == str(uid)}
    for plan in stale:
        with contextlib.suppress(KeyError):
            LIVE_NFR.remove(str(uid), plan)
    run_to_end(ctx, uid)
    with session_scope(ctx.url) as s:
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "completed" and up.done == 30
        assert up.nfr is None and up.map is None
        assert up.checkpoints and all(c["nfr"] is None for c in up.checkpoints)
    samples = [s for m in LIVE_NFR.collect() for s in m.samples if s.labels.get("upgrade") == str(uid)]
    assert samples == []  # the gauge is never written as 0


def test_pause_logs_a_batch_whose_worker_died_between_commit_and_log(make_gallery) -> None:
    """SIGKILL between a batch's SQL commit and its index-log append: SQL has moved the items
    but no replica heard of it. The lease is still out; pausing logs those items again."""
    g = make_gallery(n=24)
    ctx, uid = start_and_score(g, strategy="margin", batch_size=8)
    q = BackfillQueue(ctx.redis, g.settings, uid)
    leased = q.lease(8, 60)
    assert sorted(q.leased_ids()) == sorted(leased)
    with session_scope(ctx.url) as s:
        dim = ctx.encoders.get(s, g.new).meta.embedding_dim
    vectors = np.random.default_rng(0).standard_normal((8, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with session_scope(ctx.url) as s:  # the worker's transaction landed ...
        upgrades.record_encoded(s, uid, g.new, leased, vectors)

    # ... and it died before indexlog.append: no `move` for these ids yet
    def moved() -> set[int]:
        return {
            i for e in indexlog.read_after(ctx.redis, g.settings, "0-0", count=10_000) if e.op == "move" for i in e.ids
        }

    assert moved().isdisjoint(leased)
    assert control.act(g.settings, ctx.redis, uid, "pause") == "paused"
    assert moved() == set(leased)


def test_without_probes_one_drain_call_runs_through_every_checkpoint(make_gallery) -> None:
    """No labeled probes: each checkpoint records progress only, and neither stalls the pipeline
    nor ends the drain call (each end costs a Celery round trip and a pipeline refill)."""
    g = make_gallery(n=64)
    g.settings.__dict__["probe_size"] = 0
    g.settings.__dict__["nfr_checkpoint_every"] = 0.25
    ctx, uid = start_and_score(g, strategy="margin", batch_size=8)
    assert drain(ctx, uid, budget_s=120.0) == "stop"
    with session_scope(ctx.url) as s:
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "completed" and up.done == 64
        points = up.checkpoints
    assert all(p["nfr"] is None and p["map"] is None for p in points)
    progress = [p["progress"] for p in points]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert [p["step"] for p in points[1:-1]] == [1, 2, 3]


def test_a_batch_whose_background_encoding_fails_is_retried(make_gallery, monkeypatch) -> None:
    """The encoding is started by the loader thread and collected by the encoder thread: an error
    raised there is the batch's failed attempt (items back to the queue), not a lost batch."""
    from models.checkpoint import LoadedModel

    g = make_gallery(n=24)
    ctx, uid = start_and_score(g, strategy="margin", batch_size=8)
    real = LoadedModel.submit_tensor
    failed_ids: list[int] = []

    class Broken:
        def result(self) -> np.ndarray:
            raise RuntimeError("the encoder broke")

    def first_fails(self, x):
        if not failed_ids:
            failed_ids.append(len(x))
            return Broken()
        return real(self, x)

    monkeypatch.setattr(LoadedModel, "submit_tensor", first_fails)
    run_to_end(ctx, uid)
    with session_scope(ctx.url) as s:
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "completed" and up.done == 24 and up.failed == 0
        attempts = sorted(s.scalars(select(BackfillTask.attempts).where(BackfillTask.upgrade_id == uid)))
    assert failed_ids == [8] and attempts == [0] * 16 + [1] * 8  # one failed attempt for that batch's items
    assert models_of(ctx.url) == {g.new: 24}


def test_helper_threads_are_made_nicer_without_renicing_the_process() -> None:
    """Linux niceness is per thread: the loader/writer threads yield a busy core to the encoder,
    and the process (the encoder's thread among it) keeps its priority."""
    import os
    import sys
    import threading

    from workers.drain import lower_thread_priority

    if not sys.platform.startswith("linux"):
        pytest.skip("per-thread niceness is Linux's")
    main_before = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[int] = []

    def helper() -> None:
        lower_thread_priority(3)
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))

    t = threading.Thread(target=helper)
    t.start()
    t.join()
    assert seen == [min(19, main_before + 3)]
    assert os.getpriority(os.PRIO_PROCESS, 0) == main_before == os.getpriority(os.PRIO_PROCESS, os.getpid())


@pytest.mark.parametrize("decode_threads", [1, 2])
def test_backfilled_vectors_are_what_the_new_model_gives_each_image(make_gallery, fmnist_test, decode_threads) -> None:
    """Whichever decoder the loader took (libpng for these PNGs), and however many threads
    decoded a batch, the stored vectors are the new model's embedding of the image as uploaded,
    as ``POST /gallery`` would have computed it."""
    from PIL import Image

    from service.repositories.common import vector_from_bytes

    g = make_gallery(n=40)
    g.settings.decode_threads = decode_threads
    ctx, uid = start_and_score(g, batch_size=16)
    run_to_end(ctx, uid)
    with session_scope(ctx.url) as s:
        model = ctx.encoders.get(s, g.new)
        stored = dict(s.execute(select(Embedding.item_id, Embedding.vector).where(Embedding.model == g.new)).all())
    assert sorted(stored) == sorted(g.ids)
    expected = model.embed_images([Image.fromarray(a) for a in fmnist_test[0][:40]])
    got = np.stack([vector_from_bytes(stored[i]) for i in g.ids])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def _gauges_of(upgrade_id: int) -> dict[str, dict[str, float]]:
    """This process's gauge series of one upgrade: {metric: {plan or "": value}}."""
    from service.metrics import upgrade_gauges

    out: dict[str, dict[str, float]] = {}
    for gauge in upgrade_gauges():
        for m in gauge.collect():
            for smp in m.samples:
                if smp.labels.get("upgrade") == str(upgrade_id):
                    out.setdefault(smp.name, {})[smp.labels.get("plan", "")] = smp.value
    return out


def test_live_gauges_carry_the_bound_and_end_with_the_upgrade(make_gallery) -> None:
    """Scoring sets the first point's NFR and the bound it is held to; a drain that finds the
    upgrade ended by another process (an operator's rollback through the API) drops this
    process's series; the watchdog drops any left by a process that never looked again; a
    completed upgrade leaves none."""
    from service.metrics import BACKFILL_PROGRESS
    from workers.watchdog import tick

    g = make_gallery(n=80)  # more than the window (32) after a batch or two
    ctx, uid = start_and_score(g, strategy="margin", batch_size=8)
    with session_scope(ctx.url) as s:
        first = upgrades.get_upgrade(s, uid).checkpoints[0]
    live = _gauges_of(uid)
    assert live["hotrefresh_backfill_progress_ratio"] == {"": 0.0}
    assert live["hotrefresh_live_nfr_ratio"][first["plan"]] == pytest.approx(first["nfr"])
    # auto: the bound the chooser held the first point to, on every plan it measured
    assert first["nfr_bound"] is not None and first["reason"] == "start"  # nothing moved: the old system
    bounds = live["hotrefresh_live_nfr_bound_ratio"]
    assert set(bounds) == set(first["candidates"]) and set(bounds.values()) == {first["nfr_bound"]}

    assert drain(ctx, uid, budget_s=0.01) in ("continue", "wait", "stop")
    # the whole queue still to do (SQL's pending tasks), not the Redis window's depth
    with session_scope(ctx.url) as s:
        pending = upgrades.task_counts(s, uid)["pending"]
    assert pending > g.settings.queue_window > BackfillQueue(ctx.redis, g.settings, uid).depth()
    assert _gauges_of(uid)["hotrefresh_backfill_queue_depth"] == {"": pending}
    # another process rolls it back (the state only: this process does not hear of it)
    with session_scope(ctx.url) as s:
        s.execute(update(Upgrade).where(Upgrade.id == uid).values(state="rolled_back"))
    assert _gauges_of(uid)  # still reported ...
    assert drain(ctx, uid, budget_s=5.0) == "stop"
    assert _gauges_of(uid) == {}  # ... until this worker saw the end

    BACKFILL_PROGRESS.labels(str(uid)).set(0.5)  # a process that never looked again
    tick(g.settings, ctx.redis)
    assert _gauges_of(uid) == {}


def test_a_completed_upgrade_leaves_no_gauge(make_gallery) -> None:
    g = make_gallery(n=32)
    ctx, uid = start_and_score(g, strategy="margin", batch_size=8)
    assert _gauges_of(uid)
    run_to_end(ctx, uid)
    with session_scope(ctx.url) as s:
        assert upgrades.get_upgrade(s, uid).state == "completed"
    assert _gauges_of(uid) == {}


@pytest.mark.parametrize(("nfr_target", "bound"), [(0.03, 0.03), (None, 0.05)])
def test_under_a_fixed_plan_the_bound_is_the_target_else_five_percent(make_gallery, nfr_target, bound) -> None:
    """No chooser, no estimate: the NFR alert's line is the upgrade's nfr_target, else 5%
    (models.plans.nfr_bound without an estimate)."""
    g = make_gallery(n=24)
    ctx, uid = start_and_score(g, strategy="margin", batch_size=8, plan="dual", nfr_target=nfr_target)
    with session_scope(ctx.url) as s:
        first = upgrades.get_upgrade(s, uid).checkpoints[0]
    assert first["plan"] == "dual" and first["nfr_bound"] is None and first["reason"] is None
    assert _gauges_of(uid)["hotrefresh_live_nfr_bound_ratio"] == {"dual": bound}
    control.act(g.settings, ctx.redis, uid, "cancel")
    assert _gauges_of(uid) == {}
