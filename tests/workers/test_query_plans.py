"""Query plans live: the plan is data in SQL that replicas follow through the index log, dual
finds every item's own image first whichever segment holds it, an upgrade between models of
different dimensions completes, and a rollback answers exactly as the old system did.
Real SQLite/PostgreSQL, Redis, images and (tiny) encoders, in one process."""

from __future__ import annotations

import time

import numpy as np
import pytest

from service.api.serving import Serving
from service.db.session import session_scope
from service.repositories import catalog, upgrades
from service.upgrade import control
from service.upgrade.scoring import run_scoring
from tests.utils.checkpoints import make_tiny_checkpoint
from workers.context import WorkerContext
from workers.drain import drain

pytestmark = pytest.mark.integration


def _start(g, **kw) -> tuple[WorkerContext, int]:
    ctx = WorkerContext.from_settings(g.settings)
    up = control.start(g.settings, ctx.redis, model=g.new, **kw)
    with session_scope(ctx.url) as s:
        model = ctx.encoders.get(s, g.new)
    assert run_scoring(g.settings, ctx.redis, up.id, model, ctx.images)
    return ctx, up.id


def _finish(ctx: WorkerContext, uid: int) -> None:
    for _ in range(500):
        outcome = drain(ctx, uid, budget_s=5.0)
        if outcome == "stop":
            return
        time.sleep(0.05)
    raise AssertionError("the upgrade never stopped")


def _images(g, ctx: WorkerContext) -> dict[str, bytes]:
    from service.repositories import items as item_repo

    with session_scope(ctx.url) as s:
        keys = item_repo.image_keys(s, g.ids)
    return {ext: ctx.images.get(keys[i]) for i, ext in zip(g.ids, g.external_ids, strict=True)}


def _top(replica: Serving, image: bytes, k: int = 5) -> list[str]:
    _, emb = replica.encode_query(image)
    return [e for e, _, _ in replica.search_vector(emb, k)]


def test_a_plan_travels_through_sql_and_the_log_and_replicas_switch_together(make_gallery, redis_client) -> None:
    g = make_gallery(n=40)
    a, b = Serving(g.settings, redis_client), Serving(g.settings, redis_client)
    a.reload()
    b.reload()
    assert a.status().plan is None and b.status().plan is None  # outside an upgrade: no plan
    ctx, uid = _start(g, strategy="random", plan="dual")
    a.poll()
    b.poll()
    with session_scope(ctx.url) as s:
        stored = catalog.get_serving_state(s).plan
    assert stored is not None and stored["name"] == "dual" and stored["old_model"] == g.old
    plan_a, plan_b = a.status().plan, b.status().plan
    assert plan_a is not None and plan_b is not None
    assert plan_a.to_json() == plan_b.to_json() == stored  # fitted at scoring, the same on every replica
    assert plan_a.version >= 2  # the start plan, then its fitted calibration
    control.act(g.settings, ctx.redis, uid, "rollback")
    a.poll()
    b.poll()
    assert a.status().plan is None and b.status().plan is None


@pytest.mark.parametrize("plan", ["dual", "auto"])
def test_dual_finds_each_items_own_image_first_backfilled_or_not(make_gallery, redis_client, plan: str) -> None:
    g = make_gallery(n=48)
    g.settings.__dict__["batch_size"] = 16
    ctx, uid = _start(g, strategy="margin", batch_size=16, plan=plan)
    drain(ctx, uid, budget_s=0.0)  # one batch: a third of the gallery moves
    replica = Serving(g.settings, redis_client)
    replica.reload()
    plan = replica.status().plan
    assert plan is not None and plan.name == "dual"
    counts = replica.status().counts
    assert counts.get(g.new, 0) == 16 and counts.get(g.old, 0) == 32
    images = _images(g, ctx)
    for ext, image in images.items():
        assert _top(replica, image)[0] == ext


def test_an_upgrade_between_models_of_different_dimensions_completes(make_gallery, redis_client) -> None:
    g = make_gallery(n=40)
    wide = g.settings.models_path / "wide.pt"
    make_tiny_checkpoint(wide, "wide", arch="conv4", embedding_dim=48, seed=3, trained_with="independent")
    with session_scope(g.settings.sqlalchemy_url) as s:
        from service.registry import EncoderCache, register

        register(s, g.settings, EncoderCache("cpu"), wide, uploaded=False)
    g.new = "wide"
    ctx = WorkerContext.from_settings(g.settings)
    for refused in ({"plan": "paper"}, {"plan": "dual", "strategy": "margin"}):
        with pytest.raises(control.UpgradeRequestError, match="dimensions"):
            control.start(g.settings, ctx.redis, model="wide", **{"strategy": "random", **refused})
    ctx, uid = _start(g, strategy="random", plan="auto")
    replica = Serving(g.settings, redis_client)
    replica.reload()
    images = _images(g, ctx)
    for ext, image in list(images.items())[:10]:
        assert _top(replica, image)[0] == ext  # all old still: the old system, exactly
    _finish(ctx, uid)
    replica.poll()
    with session_scope(ctx.url) as s:
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "completed" and up.done == 40
        assert {p.get("plan") for p in up.checkpoints} <= {"dual", "transform", "blend"}  # never the paper's
    assert replica.status().counts in ({g.old: 0, "wide": 40}, {"wide": 40})
    assert replica.status().dims["wide"] == 48
    for ext, image in list(images.items())[:10]:
        assert _top(replica, image)[0] == ext
    control.commit(g.settings, ctx.redis, uid)
    replica.poll()
    assert replica.status().plan is None and g.old not in replica.encoders.loaded()
    for ext, image in list(images.items())[:10]:
        assert _top(replica, image)[0] == ext


@pytest.mark.parametrize("plan", ["paper", "dual", "transform", "blend"])
def test_after_a_rollback_every_search_answers_as_the_old_system_did(make_gallery, redis_client, plan: str) -> None:
    g = make_gallery(n=40)
    g.settings.__dict__["batch_size"] = 8
    before = Serving(g.settings, redis_client)
    before.reload()
    images = _images(g, WorkerContext.from_settings(g.settings))
    answers = {ext: before.search_vector(before.encode_query(im)[1], 10) for ext, im in images.items()}
    ctx, uid = _start(g, strategy="margin", batch_size=8, plan=plan)
    drain(ctx, uid, budget_s=0.0)
    drain(ctx, uid, budget_s=0.0)
    replica = Serving(g.settings, redis_client)
    replica.reload()
    assert replica.status().counts[g.new] > 0
    control.act(g.settings, ctx.redis, uid, "rollback")
    replica.poll()
    for ext, image in images.items():
        got = replica.search_vector(replica.encode_query(image)[1], 10)
        assert [e for e, _, _ in got] == [e for e, _, _ in answers[ext]]
        np.testing.assert_allclose([s for _, s, _ in got], [s for _, s, _ in answers[ext]], rtol=1e-5)


def test_blend_serves_one_query_per_segment_that_ranks_as_its_maths(make_gallery, redis_client) -> None:
    """``blend`` folds its two old-side terms into one query on the old segment: the replica's
    answer equals ``models.plans.mixed_scores`` of the served plan over the vectors in SQL."""
    import torch

    from models.plans import mixed_scores
    from service.repositories import items as item_repo
    from service.upgrade import probes

    g = make_gallery(n=80)
    g.settings.__dict__["batch_size"] = 40
    ctx, uid = _start(g, strategy="mixed", batch_size=40, plan="blend")
    drain(ctx, uid, budget_s=0.0)  # one batch: half the gallery, enough pairs to fit T
    replica = Serving(g.settings, redis_client)
    replica.reload()
    plan = replica.status().plan
    assert plan is not None and plan.name == "blend" and plan.version > 1
    assert plan.spec.transform is not None and plan.spec.transform.pairs == 40
    assert plan.query_models() == [g.old, g.new]
    with session_scope(ctx.url) as s:
        gallery = probes.load_gallery(s)
        external = item_repo.external_id_map(s)
    on_new = torch.from_numpy(gallery.on(g.new).astype(bool))
    assert 0 < int(on_new.sum()) < 80
    g_old, g_new = (torch.from_numpy(gallery.dense(m, gallery.dim(m))) for m in (g.old, g.new))
    for image in list(_images(g, ctx).values())[:8]:
        _, emb = replica.encode_query(image)
        got = replica.search_vector(emb, 10)
        scores = mixed_scores(
            plan.spec, torch.from_numpy(emb[g.old]), torch.from_numpy(emb[g.new]), g_old, g_new, on_new
        )[0]
        top = torch.argsort(scores, descending=True)[:10].tolist()
        expected = [external[int(gallery.ids[j])] for j in top]
        assert [e for e, _, _ in got] == expected
        np.testing.assert_allclose([s for _, s, _ in got], scores[top].numpy(), rtol=1e-4, atol=1e-5)
