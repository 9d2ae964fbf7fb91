"""Starting and running an upgrade in one process, without Celery (the tests of service/upgrade
and of the drain)."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from service.db.schema import GalleryItem
from service.db.session import session_scope
from service.upgrade import control
from service.upgrade.scoring import run_scoring
from workers.context import WorkerContext
from workers.drain import drain


def start_and_score(g, **kw) -> tuple[WorkerContext, int]:
    ctx = WorkerContext.from_settings(g.settings)
    up = control.start(g.settings, ctx.redis, model=g.new, **kw)
    with session_scope(ctx.url) as s:
        model = ctx.encoders.get(s, g.new)
    assert run_scoring(g.settings, ctx.redis, up.id, model, ctx.images)
    return ctx, up.id


def run_to_end(ctx: WorkerContext, upgrade_id: int, rounds: int = 500) -> None:
    for _ in range(rounds):
        outcome = drain(ctx, upgrade_id, budget_s=5.0)
        if outcome == "stop":
            return
        if outcome == "wait":
            time.sleep(0.05)
    raise AssertionError("the upgrade never stopped")


def models_of(url: str) -> dict[str, int]:
    with session_scope(url) as s:
        rows = s.execute(select(GalleryItem.active_model, func.count()).group_by(GalleryItem.active_model))
        return {m: int(n) for m, n in rows}


def make_history(g) -> tuple[WorkerContext, dict[str, int]]:
    """Four upgrades of gallery ``g`` (``tests.utils.gallery.Gallery``), oldest first: rolled back
    after a batch landed, cancelled, completed and committed, and one back to the first model,
    scored and left running. Returns the context and each one's id by its state."""
    ctx, rolled = start_and_score(g, strategy="random", batch_size=8)
    drain(ctx, rolled, budget_s=0.01)  # a batch lands: the rollback leaves done > 0
    assert control.act(g.settings, ctx.redis, rolled, "rollback") == "rolled_back"
    _, cancelled = start_and_score(g, strategy="random", batch_size=8)
    assert control.act(g.settings, ctx.redis, cancelled, "cancel") == "cancelled"
    _, committed = start_and_score(g, strategy="random", batch_size=8)
    run_to_end(ctx, committed)
    assert control.act(g.settings, ctx.redis, committed, "commit") == "committed"
    up = control.start(g.settings, ctx.redis, model=g.old, strategy="random", batch_size=8)
    with session_scope(ctx.url) as s:
        model = ctx.encoders.get(s, g.old)
    assert run_scoring(g.settings, ctx.redis, up.id, model, ctx.images)
    return ctx, {"rolled_back": rolled, "cancelled": cancelled, "committed": committed, "running": up.id}
