"""Celery tasks: thin shells that take an upgrade id, re-read state from SQL, and call the plain
functions of ``service.upgrade`` and ``workers.backfill``.

How workers keep pulling batches: **self-re-enqueueing drain tasks**. ``POST /upgrade`` (after
scoring) and ``resume`` start ``settings.drain_chains`` drain tasks; each runs batches for up to
``drain_budget_seconds`` and then sends its own successor, so a chain lives exactly as long as
the upgrade is running. Chains rather than one endless task per process because a bounded task
keeps the broker's redelivery meaningful (an endless task would outlive any visibility timeout
and be delivered twice), lets a paused upgrade's chains simply end, and spreads chains over
however many worker processes exist, with no registry of workers. A chain lost to SIGKILL or
to a Redis flush is restarted by the watchdog (``workers.watchdog``) when no drain task has run
for a while; the items themselves are protected by the queue's leases, not by the messages.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

from celery import shared_task

from service import keys
from service.db.session import read_scope
from service.dispatch import DRAIN_TASK, SCORE_TASK, send_drains
from service.errors import UnknownModel
from service.repositories import catalog, upgrades
from service.settings import get_settings
from service.upgrade import control
from service.upgrade.scoring import run_scoring
from workers.context import WorkerContext
from workers.drain import Outcome, drain

log = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def _context(pid: int) -> WorkerContext:
    # Keyed by pid: a forked pool child must not reuse its parent's Redis connection.
    return WorkerContext.from_settings(get_settings())


def context() -> WorkerContext:
    return _context(os.getpid())


def score(upgrade_id: int) -> bool:
    """Score an upgrade once (guarded by a lock); on success start the drain chains."""
    ctx = context()
    lock = keys.scoring_lock(ctx.settings, upgrade_id)
    if not ctx.redis.set(lock, str(os.getpid()), nx=True, ex=keys.scoring_lock_ttl(ctx.settings)):
        log.info("upgrade %s is being scored by another worker", upgrade_id)
        return False
    try:
        with read_scope(ctx.url) as s:
            up = upgrades.get_upgrade(s, upgrade_id)
            if up is None:
                return False
            row = catalog.get_model(s, up.to_model)
        if row is None:
            raise UnknownModel(f"model {up.to_model!r} is not registered")
        # Outside any transaction: loading and warming an encoder takes seconds.
        new_model = ctx.encoders.load(row.name, row.path)
        started = run_scoring(ctx.settings, ctx.redis, upgrade_id, new_model, ctx.images)
    except Exception as exc:
        log.exception("scoring upgrade %s failed", upgrade_id)
        control.fail(ctx.settings, ctx.redis, upgrade_id, f"scoring failed: {type(exc).__name__}: {exc}")
        return False
    finally:
        ctx.redis.delete(lock)
    if started:
        ctx.heartbeat(upgrade_id)
        send_drains(ctx.settings, upgrade_id)
    return started


@shared_task(name=SCORE_TASK, acks_late=True, reject_on_worker_lost=True)
def score_task(upgrade_id: int) -> bool:
    return score(int(upgrade_id))


@shared_task(name=DRAIN_TASK, acks_late=True, reject_on_worker_lost=True)
def drain_task(upgrade_id: int) -> str:
    ctx = context()
    try:
        outcome = drain(ctx, int(upgrade_id))
    except Exception:
        # The database or Redis briefly away: keep the chain alive (the leases protect the items)
        # rather than let the failed task end it; back off a little.
        log.exception("drain of upgrade %s failed; retrying shortly", upgrade_id)
        send_drains(ctx.settings, upgrade_id, n=1, countdown=2.0)
        return "error"
    if outcome is Outcome.CONTINUE:
        send_drains(ctx.settings, upgrade_id, n=1)
    elif outcome is Outcome.WAIT:
        # Others hold the last leases: look again shortly (an expired one is reclaimed then).
        send_drains(ctx.settings, upgrade_id, n=1, countdown=0.5)
    return outcome.value
