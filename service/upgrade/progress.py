"""Completion of a running upgrade, and how far along it is.

Called by a drain that finds the queue and the lease set empty: SQL decides whether work is
left (orphans, a queue Redis lost), the items the backfill could not encode are mapped
(``service.upgrade.mapping``; a vector-only upgrade maps them all here), and the final point is
measured before the state changes.
"""

from __future__ import annotations

import logging

import redis as redis_lib

from service.db.session import read_scope, session_scope
from service.metrics import remove_upgrade
from service.queue import BackfillQueue, Cursor, Loader
from service.repositories import upgrades
from service.settings import Settings
from service.states import RUNNING, SCORING, TransitionError
from service.timestamps import utcnow
from service.upgrade import checkpoints, control, mapping

log = logging.getLogger(__name__)


def try_complete(settings: Settings, redis: redis_lib.Redis, upgrade_id: int) -> str:
    """Called when a worker finds the queue and the lease set empty. Returns ``"completed"``,
    ``"requeued"`` (SQL still had work: orphans added or the lost queue rebuilt) or ``"wait"``."""
    queue = BackfillQueue(redis, settings, upgrade_id)
    with session_scope(settings.sqlalchemy_url) as s:
        up = upgrades.get_upgrade(s, upgrade_id)
        if up is None or up.state != RUNNING:
            return "wait"
        vector_only = bool(up.vector_only)
        orphans = upgrades.add_orphans(s, up)
    if vector_only:
        # No image is read: every task (orphans included) is mapped here, none is queued.
        try:
            mapping.map_tasks(settings, redis, upgrade_id, "pending")
        except mapping.NoMap as e:
            control.fail(settings, redis, upgrade_id, f"vector-only upgrade: {e}")
            return "wait"
    else:
        with read_scope(settings.sqlalchemy_url) as s:  # a look: never hold back the writers
            pending = upgrades.task_counts(s, upgrade_id)["pending"]
        if pending:
            # Nothing queued, nothing leased, and SQL has work: orphans just added, or a window
            # Redis lost. Either way none of it is in Redis: the window starts again from SQL's top.
            n = queue.rebuild_if_lost(window_loader(settings, upgrade_id))
            if n and not orphans:
                log.warning("upgrade %s: Redis had lost the queue; rebuilt its window (%d items)", upgrade_id, n)
            return "requeued"
        # The backfill is over: the items it could not encode get mapped vectors (one step, the
        # map fitted on every backfilled pair), so they are on the new model when it completes.
        try:
            mapping.map_tasks(settings, redis, upgrade_id, "failed")
        except mapping.NoMap as e:
            log.warning("upgrade %s: failed items stay on the old model: %s", upgrade_id, e)
    # The final point is measured before the state changes and recorded in the same transaction
    # as the transition, so whoever reads "completed" also reads the 100% point.
    # Every item is on the new model: every plan scores alike, so the point's plan is not served.
    point = checkpoints.measure_point(settings, upgrade_id, step=-1)
    try:
        with session_scope(settings.sqlalchemy_url) as s:
            # Re-checked inside the transition's transaction: nothing pending, still running.
            counts = upgrades.task_counts(s, upgrade_id)
            if counts["pending"]:
                return "requeued"
            upgrades.transition(s, upgrade_id, "complete", completed_at=utcnow())
            if point is not None:
                upgrades.append_checkpoint(s, upgrade_id, point.stored())
    except TransitionError:
        return "wait"
    # The backfill is over: its gauges go (GET /upgrade keeps the final point and fraction);
    # other processes drop theirs when they see the state (workers.drain, service.upgrade.gauges).
    remove_upgrade(upgrade_id)
    log.info("upgrade %s completed; final live NFR %s mAP %s", upgrade_id, point and point.nfr, point and point.map)
    return "completed"


def window_loader(settings: Settings, upgrade_id: int) -> Loader:
    """SQL's side of the upgrade's Redis window: the next pending tasks in queue order, read in
    a read-only transaction (a refill must never hold back the writers)."""

    def load(after: Cursor | None, limit: int) -> list[tuple[int, float]]:
        with read_scope(settings.sqlalchemy_url) as s:
            return upgrades.pending_after(s, upgrade_id, after, limit)

    return load


def still_to_do(total: int, done: int, failed: int, mapped: int = 0, vector_only: bool = False) -> int:
    """Items of the upgrade not yet re-encoded, mapped nor failed: what
    ``hotrefresh_backfill_queue_depth`` reports. The row's ``failed`` counts the items mapped after
    failing too; only a vector-only upgrade maps items that never failed. Not the Redis queue's
    depth, which is only its window (at most ``HOTREFRESH_QUEUE_WINDOW``): the dashboard's ETA
    and the queue alerts need the whole queue."""
    return max(0, int(total) - int(done) - int(failed) - (int(mapped or 0) if vector_only else 0))


def moved_fraction(counts: dict[str, int], state: str | None = None) -> float | None:
    """Share of the upgrade's items on the new model, encoded or mapped. Items deleted from the
    gallery mid-upgrade drop out of the denominator with their task; failed items count as not
    moved. None while scoring: the tasks do not exist yet, and "no tasks" must not read as
    "everything moved"."""
    if state == SCORING:
        return None
    moved = counts["done"] + counts.get("mapped", 0)
    denominator = counts["pending"] + moved + counts["failed"]
    return 1.0 if denominator == 0 else moved / denominator
