"""Progress of a running upgrade: live NFR/mAP checkpoints, the guardrail, completion, and the
view ``GET /upgrade`` answers with.

Checkpoints are claimed through a Redis ``SET NX`` per step so that, with many workers, each
step is measured once; the result is appended to ``upgrade.checkpoints`` under the row lock.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import redis as redis_lib
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import keys
from service.db.schema import Upgrade, utcnow
from service.db.session import read_scope, session_scope
from service.metrics import BACKFILL_PROGRESS, LIVE_MAP, LIVE_NFR
from service.queue import BackfillQueue
from service.settings import Settings
from service.upgrade import probes, store
from service.upgrade.states import COMMITTED, COMPLETED, RUNNING, TransitionError

log = logging.getLogger(__name__)


def progress_of(up: Upgrade) -> float:
    return 1.0 if up.total <= 0 else min(1.0, up.done / up.total)


def _append_checkpoint(session: Session, upgrade_id: int, point: dict) -> Upgrade:
    up = session.scalar(select(Upgrade).where(Upgrade.id == upgrade_id).with_for_update())
    assert up is not None
    points = list(up.checkpoints or [])
    if points and point["step"] != -1 and points[-1].get("fraction") == point["fraction"]:
        # Two workers claimed neighbouring steps and measured the same cut: keep one point.
        return up
    up.checkpoints = [*points, point]
    up.nfr = point["nfr"]
    up.map = point["map"]
    session.flush()
    return up


def _set_live_gauges(upgrade_id: int, nfr: float | None, map_: float | None) -> None:
    # No labels, no probes: the gauge is left unset ("unavailable"), never written as 0.
    if nfr is not None:
        LIVE_NFR.labels(str(upgrade_id)).set(nfr)
    if map_ is not None:
        LIVE_MAP.labels(str(upgrade_id)).set(map_)


def measure_point(
    settings: Settings, upgrade_id: int, step: int, gallery: probes.Gallery | None = None, quiesced: bool = True,
) -> dict | None:
    """Measure the probes against the gallery as SQL holds it (or the snapshot ``gallery``);
    None when the upgrade has no baseline. A read-only transaction: reading the gallery must
    not hold SQLite's write lock and stall every writer for the length of the read."""
    with read_scope(settings.sqlalchemy_url) as s:
        up = store.get_upgrade(s, upgrade_id)
        if up is None or not up.baseline:
            return None
        m = probes.measure(s, up.baseline, up.to_model, gallery)
        progress = progress_of(up)
    return {"step": step, "fraction": m.fraction, "progress": progress, "nfr": m.nfr, "map": m.map,
            "top1": m.top1, "at": time.time(), "quiesced": quiesced}


def checkpoint_now(
    settings: Settings, redis: redis_lib.Redis, upgrade_id: int, step: int,
    gallery: probes.Gallery | None = None, quiesced: bool = True,
) -> dict | None:
    """Measure and record one point, then apply the guardrail to it."""
    point = measure_point(settings, upgrade_id, step, gallery, quiesced)
    if point is None:
        return None
    with session_scope(settings.sqlalchemy_url) as s:
        up = _append_checkpoint(s, upgrade_id, point)
        guardrail = up.nfr_guardrail
    nfr = point["nfr"]
    _set_live_gauges(upgrade_id, nfr, point["map"])
    if guardrail is not None and nfr is not None and nfr > guardrail:
        try:
            with session_scope(settings.sqlalchemy_url) as s:
                store.transition(s, upgrade_id, "guardrail",
                                 error=f"paused by the NFR guardrail: live NFR {nfr:.4f} > {guardrail:.4f} "
                                       f"at {point['fraction']:.0%} backfilled")
            log.warning("upgrade %s paused: live NFR %.4f above guardrail %.4f", upgrade_id, nfr, guardrail)
        except TransitionError:
            pass
    return point


def step_due(settings: Settings, progress: float) -> int:
    """The checkpoint step this progress has reached (multiples of ``nfr_checkpoint_every``)."""
    return int(math.floor(progress / settings.nfr_checkpoint_every + 1e-9))


def claim_checkpoint(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, progress: float) -> int | None:
    """The checkpoint step due at this progress, claimed for this caller (``SET NX``), or None.
    Checkpoints fall on multiples of ``nfr_checkpoint_every``; the 100% point is taken at
    completion."""
    step = step_due(settings, progress)
    if step <= 0 or progress >= 1.0:
        return None
    if not redis.set(keys.checkpoint_claim(settings, upgrade_id, step), "1", nx=True, ex=keys.CHECKPOINT_CLAIM_TTL_S):
        return None
    # Steps skipped by a big jump are claimed too, so they are not measured late.
    for earlier in range(1, step):
        redis.set(keys.checkpoint_claim(settings, upgrade_id, earlier), "1", nx=True, ex=keys.CHECKPOINT_CLAIM_TTL_S)
    return step


def has_probes(settings: Settings, upgrade_id: int) -> bool:
    """Whether the upgrade's checkpoints measure anything (labeled probes were drawn at its start)."""
    with read_scope(settings.sqlalchemy_url) as s:
        up = store.get_upgrade(s, upgrade_id)
        return bool(up is not None and up.baseline and up.baseline.get("probe_ids"))


BARRIER_RENEW_S = 3.0  # the checkpoint barrier's TTL while its owner waits for in-flight batches
BARRIER_READ_S = 30.0  # ... and while it reads the gallery


def checkpoint_at_cut(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, step: int) -> dict | None:
    """Measure at a consistent cut: raise the queue's barrier (nobody leases), wait until every
    batch in flight has landed, snapshot the gallery from SQL, lower the barrier, then compute.
    The items on the new model are then exactly the first n of the backfill order, the state the
    offline evaluator's curve describes. Leasing stops only for the SQL read, not the maths.
    A lease held by a dead worker is waited for at most ``lease_seconds`` (then reclaimed)."""
    with session_scope(settings.sqlalchemy_url) as s:
        up = store.get_upgrade(s, upgrade_id)
        if up is None or not up.baseline:
            return None
        if not up.baseline.get("probe_ids"):
            # No labeled items, no probes: NFR/mAP are unavailable; record progress only and
            # do not stall the workers for a measurement that cannot be made.
            point = {"step": step, "fraction": progress_of(up), "progress": progress_of(up), "nfr": None,
                     "map": None, "top1": None, "at": time.time(), "quiesced": False}
            _append_checkpoint(s, upgrade_id, point)
            return point
    queue = BackfillQueue(redis, settings, upgrade_id)
    # The barrier is kept up by this process while it waits (short TTL, renewed every round), so
    # a measurer killed mid-wait holds every worker back for seconds, not for lease_seconds + 30
    # (a SIGKILL test once waited half a minute on it); the SQL read gets a longer one.
    queue.raise_barrier(BARRIER_RENEW_S)
    try:
        deadline = time.monotonic() + settings.lease_seconds + 1
        while queue.leased() and time.monotonic() < deadline:
            queue.reclaim()
            queue.raise_barrier(BARRIER_RENEW_S)
            time.sleep(0.01)
        quiesced = queue.leased() == 0
        queue.raise_barrier(BARRIER_READ_S)
        with read_scope(settings.sqlalchemy_url) as s:
            gallery = probes.load_gallery(s)
    finally:
        queue.lower_barrier()
    return checkpoint_now(settings, redis, upgrade_id, step, gallery=gallery, quiesced=quiesced)


def try_complete(settings: Settings, redis: redis_lib.Redis, upgrade_id: int) -> str:
    """Called when a worker finds the queue and the lease set empty. Returns ``"completed"``,
    ``"requeued"`` (SQL still had work: orphans added or the lost queue rebuilt) or ``"wait"``."""
    queue = BackfillQueue(redis, settings, upgrade_id)
    with session_scope(settings.sqlalchemy_url) as s:
        up = store.get_upgrade(s, upgrade_id)
        if up is None or up.state != RUNNING:
            return "wait"
        orphans = store.add_orphans(s, up)
    if orphans:
        queue.push(orphans, [-1.0] * len(orphans))
        return "requeued"
    with session_scope(settings.sqlalchemy_url) as s:
        pending = store.pending_pairs(s, upgrade_id)
    if pending:
        n = queue.rebuild_if_lost(lambda: pending)
        if n:
            log.warning("upgrade %s: Redis had lost the queue; rebuilt %d items from SQL", upgrade_id, n)
        return "requeued"
    # The final point is measured before the state changes and recorded in the same transaction
    # as the transition, so whoever reads "completed" also reads the 100% point.
    point = measure_point(settings, upgrade_id, step=-1)
    try:
        with session_scope(settings.sqlalchemy_url) as s:
            # Re-checked inside the transition's transaction: nothing pending, still running.
            counts = store.task_counts(s, upgrade_id)
            if counts["pending"]:
                return "requeued"
            store.transition(s, upgrade_id, "complete", completed_at=utcnow())
            if point is not None:
                _append_checkpoint(s, upgrade_id, point)
    except TransitionError:
        return "wait"
    # The same fraction GET /upgrade reports: items that failed are not on the new model.
    BACKFILL_PROGRESS.labels(str(upgrade_id)).set(moved_fraction(counts))
    if point is not None:
        _set_live_gauges(upgrade_id, point["nfr"], point["map"])
    log.info("upgrade %s completed; final live NFR %s mAP %s", upgrade_id,
             point and point["nfr"], point and point["map"])
    return "completed"


def moved_fraction(counts: dict[str, int]) -> float:
    """Share of the upgrade's items on the new model. Items deleted from the gallery mid-upgrade
    drop out of the denominator with their task; failed items count as not moved."""
    denominator = counts["pending"] + counts["done"] + counts["failed"]
    return 1.0 if denominator == 0 else counts["done"] / denominator


@dataclass(frozen=True)
class UpgradeView:
    id: int
    from_model: str
    to_model: str
    strategy: str
    state: str
    total: int
    done: int
    failed: int
    pending: int
    fraction: float
    nfr: float | None
    map: float | None
    eta_s: float | None
    items_per_s: float | None
    queue_depth: int | None
    leased: int | None
    baseline: dict | None
    checkpoints: list[dict]
    failures: list[dict]
    error: str | None
    batch_size: int
    nfr_guardrail: float | None
    created_at: str
    completed_at: str | None


def view(session: Session, up: Upgrade, redis: redis_lib.Redis | None, settings: Settings,
         failures_limit: int = 100) -> UpgradeView:
    counts = store.task_counts(session, up.id)
    fraction = moved_fraction(counts)
    base = up.baseline or {}
    items_per_s = eta = None
    running_since = base.get("running_since")
    if running_since and up.done:
        end = (up.completed_at.timestamp() if up.completed_at else time.time())
        elapsed = max(1e-6, end - float(running_since))
        items_per_s = up.done / elapsed
        if up.state == RUNNING:
            eta = counts["pending"] / items_per_s
        elif up.state in (COMPLETED, COMMITTED):
            eta = 0.0
    depth = leased = None
    if redis is not None:
        try:
            q = BackfillQueue(redis, settings, up.id)
            depth, leased = q.depth(), q.leased()
        except redis_lib.RedisError:
            pass
    summary = {k: base.get(k) for k in ("old_map", "old_top1_rate", "map_k") if k in base}
    summary["probes"] = len(base.get("probe_ids", []))
    return UpgradeView(
        id=up.id, from_model=up.from_model, to_model=up.to_model, strategy=up.strategy, state=up.state,
        total=up.total, done=counts["done"], failed=counts["failed"], pending=counts["pending"],
        fraction=fraction, nfr=up.nfr, map=up.map, eta_s=eta, items_per_s=items_per_s,
        queue_depth=depth, leased=leased, baseline=summary if base else None,
        checkpoints=list(up.checkpoints or []),
        failures=[
            {"item_id": f.item_id, "external_id": f.external_id, "attempts": f.attempts, "error": f.error}
            for f in store.list_failures(session, up.id, failures_limit)
        ],
        error=up.error, batch_size=up.batch_size, nfr_guardrail=up.nfr_guardrail,
        created_at=up.created_at.isoformat(),
        completed_at=up.completed_at.isoformat() if up.completed_at else None,
    )
