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
from service.metrics import BACKFILL_PROGRESS
from service.queue import BackfillQueue
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
    elif orphans:
        queue.push(orphans, [-1.0] * len(orphans))
        return "requeued"
    else:
        with read_scope(settings.sqlalchemy_url) as s:  # a look: never hold back the writers
            pending = upgrades.pending_pairs(s, upgrade_id)
        if pending:
            n = queue.rebuild_if_lost(lambda: pending)
            if n:
                log.warning("upgrade %s: Redis had lost the queue; rebuilt %d items from SQL", upgrade_id, n)
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
    # The same fraction GET /upgrade reports: items that failed are not on the new model.
    BACKFILL_PROGRESS.labels(str(upgrade_id)).set(moved_fraction(counts) or 0.0)
    if point is not None:
        checkpoints.set_live_gauges(upgrade_id, point)
    log.info("upgrade %s completed; final live NFR %s mAP %s", upgrade_id, point and point.nfr, point and point.map)
    return "completed"


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
