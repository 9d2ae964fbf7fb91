"""Upgrade transitions and the instant rollback, on SQLite and PostgreSQL with real Redis."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from service import indexlog
from service.db.schema import Embedding
from service.db.session import session_scope
from service.queue import BackfillQueue
from service.repositories import catalog, upgrades
from service.states import TransitionError
from service.upgrade import control
from tests.utils.upgrade import models_of, start_and_score
from workers.drain import drain

pytestmark = pytest.mark.integration


def test_transitions_and_instant_rollback(make_gallery) -> None:
    g = make_gallery(n=40)
    ctx, uid = start_and_score(g, strategy="random", batch_size=8)
    with pytest.raises(control.UpgradeConflict):  # one upgrade at a time
        control.start(g.settings, ctx.redis, model=g.new)
    for bad in ("resume", "commit"):
        with pytest.raises(TransitionError):
            control.act(g.settings, ctx.redis, uid, bad)
    assert control.act(g.settings, ctx.redis, uid, "pause") == "paused"
    assert drain(ctx, uid, budget_s=1.0) == "stop"  # paused upgrades do not lease
    assert BackfillQueue(ctx.redis, g.settings, uid).depth() == min(40, g.settings.queue_window)  # none leased
    with pytest.raises(TransitionError):
        control.act(g.settings, ctx.redis, uid, "pause")
    assert control.act(g.settings, ctx.redis, uid, "resume") == "running"
    drain(ctx, uid, budget_s=0.01)  # at least one batch of 8 lands
    on_new = models_of(ctx.url).get(g.new, 0)
    assert 8 <= on_new < 40

    assert control.act(g.settings, ctx.redis, uid, "rollback") == "rolled_back"
    assert models_of(ctx.url) == {g.old: 40}
    with session_scope(ctx.url) as s:
        serving = catalog.get_serving_state(s)
        assert (serving.query_model, serving.gallery_model) == (g.old, g.old)
        assert s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model == g.new)) == 0
        assert s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model == g.old)) == 40
    assert BackfillQueue(ctx.redis, g.settings, uid).is_empty()
    log_ops = [e.op for e in indexlog.read_after(ctx.redis, g.settings, "0-0", count=10_000)]
    assert log_ops[0] == "switch" and log_ops[-1] == "rollback"
    assert drain(ctx, uid, budget_s=1.0) == "stop"
    for bad in ("pause", "resume", "cancel", "rollback", "commit"):
        with pytest.raises(TransitionError):
            control.act(g.settings, ctx.redis, uid, bad)

    # a new upgrade may start after a rollback; cancel returns to the old model too
    ctx2, uid2 = start_and_score(g, strategy="least", batch_size=8)
    drain(ctx2, uid2, budget_s=0.01)
    assert control.act(g.settings, ctx.redis, uid2, "cancel") == "cancelled"
    assert models_of(ctx.url) == {g.old: 40}


@pytest.mark.parametrize("plan, expected", [("auto", "mixed"), ("blend", "mixed"), ("paper", "margin")])
def test_an_upgrade_without_a_strategy_takes_its_plans_measured_order(make_gallery, plan: str, expected: str) -> None:
    g = make_gallery(n=12)
    ctx, uid = start_and_score(g, plan=plan)
    from service.repositories import upgrades

    with session_scope(ctx.url) as s:
        assert upgrades.get_upgrade(s, uid).strategy == expected
    assert control.default_strategy("dual", same_dimension=False) == "random"  # no classifier to score with


def test_sequential_upgrades_v1_v2_committed_then_v3_and_the_lineage(make_gallery, client) -> None:
    """Three generations, each compatible with its predecessor: v1 -> v2 (committed) -> v3
    (committed), every item re-encoded each time, and GET /models tells the lineage."""
    from service.registry import EncoderCache, register
    from tests.utils.checkpoints import make_tiny_checkpoint
    from tests.utils.upgrade import run_to_end

    g = make_gallery(n=30)
    v1, v2 = g.old, g.new
    ctx, uid = start_and_score(g)
    run_to_end(ctx, uid)
    assert control.act(g.settings, ctx.redis, uid, "commit") == "committed"
    with session_scope(ctx.url) as s:
        row = catalog.get_model(s, v2)
        spec = {"arch": row.arch, "embedding_dim": row.embedding_dim, "num_classes": row.num_classes}
    path = g.settings.models_path / "v3.pt"
    make_tiny_checkpoint(path, "v3", compatible_with=v2, trained_with="ract", seed=5, **spec)
    with session_scope(ctx.url) as s:
        register(s, g.settings, EncoderCache("cpu"), path, uploaded=False)
    g.new = "v3"
    ctx, uid3 = start_and_score(g)
    run_to_end(ctx, uid3)
    assert control.act(g.settings, ctx.redis, uid3, "commit") == "committed"
    assert models_of(ctx.url) == {"v3": 30}
    with session_scope(ctx.url) as s:  # only the newest generation's vectors are left
        assert set(s.scalars(select(Embedding.model).distinct())) == {"v3"}
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert models["v3"]["lineage"] == ["v3", v2, v1] and models[v2]["lineage"] == [v2, v1]
    assert models[v1]["lineage"] == [v1] and models[v1]["replaced"] is None
    assert models[v2]["replaced"] == v1 and models["v3"]["replaced"] == v2
    assert models["v3"]["is_gallery_model"] and models["v3"]["is_query_model"]


def test_run_state_reads_each_column_into_its_field(make_gallery) -> None:
    """A batch's failure must not read as a vector-only upgrade (a positional mix-up once made
    every drain of an upgrade with one failed item stop leasing)."""
    from sqlalchemy import update

    from service.db.schema import Upgrade

    g = make_gallery(n=16)
    ctx, uid = start_and_score(g, strategy="random", batch_size=8)
    with session_scope(ctx.url) as s:
        s.execute(update(Upgrade).where(Upgrade.id == uid).values(failed=1, mapped=2, done=3))
    with session_scope(ctx.url) as s:
        st = upgrades.run_state(s, uid)
    assert (st.state, st.done, st.total, st.failed, st.mapped, st.vector_only) == ("running", 3, 16, 1, 2, False)
