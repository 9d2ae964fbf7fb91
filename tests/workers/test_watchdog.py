"""The worker watchdog: restarts lost drain chains and scoring, auto-commits after the grace
period; each kick once, however many workers watch. Real Redis (the Celery broker too) and SQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from service import keys
from service.db.schema import Embedding, Upgrade
from service.db.session import session_scope
from service.dispatch import queue_name
from service.repositories import upgrades
from service.timestamps import utcnow
from service.upgrade import control
from service.upgrade.scoring import run_scoring
from workers.context import WorkerContext
from workers.drain import drain
from workers.watchdog import tick

pytestmark = pytest.mark.integration


def broker_messages(ctx: WorkerContext) -> int:
    # kombu's Redis transport keeps a queue as a list under the global key prefix
    return int(ctx.redis.llen(keys.celery_prefix(ctx.settings) + queue_name(ctx.settings)))


def test_kicks_lost_chains_once_and_auto_commits(make_gallery) -> None:
    g = make_gallery(n=24)
    ctx = WorkerContext.from_settings(g.settings)
    g.settings.__dict__["drain_chains"] = 3
    up = control.start(g.settings, ctx.redis, model=g.new, batch_size=8)
    # scoring whose message was lost: re-sent once it is stale, once
    with session_scope(ctx.url) as s:
        s.execute(update(Upgrade).where(Upgrade.id == up.id).values(updated_at=utcnow() - timedelta(hours=1)))
    assert tick(g.settings, ctx.redis) == [f"score:{up.id}"]
    assert tick(g.settings, ctx.redis) == []
    assert broker_messages(ctx) == 1

    with session_scope(ctx.url) as s:
        model = ctx.encoders.get(s, g.new)
    assert run_scoring(g.settings, ctx.redis, up.id, model, ctx.images)
    # running, and no drain task has run: chains are started, by one watcher only
    assert tick(g.settings, ctx.redis) == [f"drain:{up.id}"]
    assert tick(g.settings, ctx.redis) == []
    assert broker_messages(ctx) == 1 + 3

    while drain(ctx, up.id, budget_s=5.0) != "stop":
        pass
    with session_scope(ctx.url) as s:
        assert upgrades.get_upgrade(s, up.id).state == "completed"
    assert tick(g.settings, ctx.redis) == []  # no grace period configured: no auto-commit
    g.settings.__dict__["commit_grace_seconds"] = 0.0
    assert tick(g.settings, ctx.redis) == [f"commit:{up.id}"]
    with session_scope(ctx.url) as s:
        assert upgrades.get_upgrade(s, up.id).state == "committed"
        assert s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model == g.old)) == 0
