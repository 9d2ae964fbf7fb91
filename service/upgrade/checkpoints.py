"""Live checkpoints of a running upgrade: when one is due, who measures it, and how it is
measured at a consistent cut. The whole protocol is here; its two other halves are the queue's
barrier (``service.queue``: while it is up the lease script hands out nothing) and the drain
(``workers.drain``: a drain that claims a step first lands every batch it holds).

1. Progress crosses a multiple of ``nfr_checkpoint_every`` (:func:`step_due`); the first drain
   to see it claims the step with ``SET NX`` (:func:`claim`), so with many workers each step is
   measured once.
2. The claimant lands what it holds, then :func:`measure_at_cut` raises the barrier, waits until
   no lease is outstanding (a dead worker's lease is waited for at most ``lease_seconds``, then
   reclaimed), reads the gallery from SQL and lowers the barrier. The items on the new model are
   then exactly the first n of the backfill order: the state the offline evaluator describes.
3. The probe queries are scored against that gallery (``service.upgrade.probes``), the point is
   appended to ``upgrade.checkpoints`` under the row lock, the live gauges are set and the
   upgrade's ``nfr_guardrail`` is applied (:func:`record`).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import redis as redis_lib
from sqlalchemy.orm import Session

from models.plans import PAPER, nfr_bound
from service import keys
from service.db.schema import Upgrade
from service.db.session import read_scope, session_scope
from service.indexport import Change, unit_of_work
from service.metrics import LIVE_MAP, LIVE_NFR, LIVE_NFR_BOUND, SERVING_PLAN, remove_upgrade
from service.queue import BackfillQueue
from service.repositories import catalog, upgrades
from service.settings import Settings
from service.states import ACTIVE, BACKFILL_OVER, TransitionError
from service.upgrade import chooser, plans, probes
from service.upgrade.plans import ServingPlan
from service.upgrade.records import Checkpoint

log = logging.getLogger(__name__)


def progress_of(up: Upgrade) -> float:
    return 1.0 if up.total <= 0 else min(1.0, up.done / up.total)


def alert_bound(settings: Settings, up: Upgrade, point: Checkpoint) -> float:
    """The probe NFR@1 this upgrade may reach at this point, the line its NFR alert is drawn at:
    under ``auto`` the chooser's bound at this cut (``nfr_target``, or the finished upgrade's NFR
    estimated here plus one point); under a fixed plan the same rule without an estimate
    (``models.plans.nfr_bound``: the upgrade's ``nfr_target``, else ``HOTREFRESH_NFR_TARGET``,
    else 5%)."""
    if point.nfr_bound is not None:
        return point.nfr_bound
    return nfr_bound(up.nfr_target if up.nfr_target is not None else settings.nfr_target, None)


def set_live_gauges(upgrade_id: int, point: Checkpoint, bound: float) -> None:
    """Every plan measured at this point, the NFR bound it is held to, and which one is served.
    No labels, no probes: the gauges are left unset ("unavailable"), never written as 0."""
    serving = point.plan or PAPER
    measured = point.candidates or {serving: {"nfr": point.nfr, "map": point.map}}
    label = str(upgrade_id)
    for plan, m in measured.items():
        nfr, map_ = m.get("nfr"), m.get("map")
        if nfr is not None:
            LIVE_NFR.labels(label, plan).set(nfr)
            LIVE_NFR_BOUND.labels(label, plan).set(bound)
        if map_ is not None:
            LIVE_MAP.labels(label, plan).set(map_)
        if point.nfr is not None or point.map is not None:
            SERVING_PLAN.labels(label, plan).set(1.0 if plan == serving else 0.0)


def measure_point(
    settings: Settings,
    upgrade_id: int,
    step: int,
    gallery: probes.Gallery | None = None,
    quiesced: bool = True,
) -> Checkpoint | None:
    """Measure the probes against the gallery as SQL holds it (or the snapshot ``gallery``);
    None when the upgrade has no baseline. A read-only transaction: reading the gallery must
    not hold SQLite's write lock and stall every writer for the length of the read."""
    with read_scope(settings.sqlalchemy_url) as s:
        up = upgrades.get_upgrade(s, upgrade_id)
        baseline = probes.baseline_of(up) if up is not None else None
        if up is None or baseline is None:
            return None
        progress = progress_of(up)
        current = serving_plan_of(s, up)
        if current is None or not baseline.measures_plans():
            return _point(probes.measure(s, baseline, up.to_model, gallery), step, progress, quiesced)
        choice = chooser.choose_at_cut(s, settings, up, current, gallery or probes.load_gallery(s), step)
    return _point(
        choice.measurement,
        step,
        progress,
        quiesced,
        plan=choice.plan.name,
        candidates=choice.candidates,
        nfr_bound=choice.nfr_bound,
        reason=choice.reason,
        serving_plan=choice.plan.to_json(),
    )


def _point(m: probes.Measurement, step: int, progress: float, quiesced: bool, **chosen: Any) -> Checkpoint:
    """The checkpoint record of one measurement (``chosen``: under a plan, what was chosen)."""
    return Checkpoint(
        step=step,
        fraction=m.fraction,
        progress=progress,
        nfr=m.nfr,
        map=m.map,
        top1=m.top1,
        at=time.time(),
        quiesced=quiesced,
        **chosen,
    )


def serving_plan_of(session: Session, up: Upgrade) -> ServingPlan | None:
    """The plan replicas serve for this upgrade, if it has one."""
    state = catalog.peek_serving_state(session)
    plan = plans.parse(state.plan) if state is not None else None
    return plan if plan is not None and plan.new_model == up.to_model else None


def serve(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, plan_json: dict) -> bool:
    """Make ``plan_json`` the plan every replica serves: SQL first (only while the upgrade still
    owns the gallery: a rollback that got there first has cleared the plan for good), then the
    index log's ``switch``. Returns whether it was served."""
    with unit_of_work(settings, redis) as uow:
        s = uow.session
        if upgrades.lock_state(s, upgrade_id) not in ACTIVE:
            return False
        catalog.set_plan(s, plan_json)
        uow.record(Change.switch(plan_json["new_model"]))
    return True


def record(
    settings: Settings,
    redis: redis_lib.Redis,
    upgrade_id: int,
    step: int,
    gallery: probes.Gallery | None = None,
    quiesced: bool = True,
) -> Checkpoint | None:
    """Measure and record one point, then apply the guardrail to it."""
    point = measure_point(settings, upgrade_id, step, gallery, quiesced)
    if point is None:
        return None
    if point.serving_plan is not None:
        serve(settings, redis, upgrade_id, point.serving_plan)
    with session_scope(settings.sqlalchemy_url) as s:
        up = upgrades.append_checkpoint(s, upgrade_id, point.stored())
        guardrail, over, bound = up.nfr_guardrail, up.state in BACKFILL_OVER, alert_bound(settings, up, point)
    nfr = point.nfr
    if over:  # it ended while this point was measured: no gauge outlives its upgrade
        remove_upgrade(upgrade_id)
        return point
    set_live_gauges(upgrade_id, point, bound)
    if guardrail is not None and nfr is not None and nfr > guardrail:
        try:
            with session_scope(settings.sqlalchemy_url) as s:
                upgrades.transition(
                    s,
                    upgrade_id,
                    "guardrail",
                    error=f"paused by the NFR guardrail: live NFR {nfr:.4f} > {guardrail:.4f} "
                    f"at {point.fraction:.0%} backfilled",
                )
            log.warning("upgrade %s paused: live NFR %.4f above guardrail %.4f", upgrade_id, nfr, guardrail)
        except TransitionError:
            pass
    return point


def step_due(settings: Settings, progress: float) -> int:
    """The checkpoint step this progress has reached (multiples of ``nfr_checkpoint_every``)."""
    return int(math.floor(progress / settings.nfr_checkpoint_every + 1e-9))


def claim(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, progress: float) -> int | None:
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
        up = upgrades.get_upgrade(s, upgrade_id)
        baseline = probes.baseline_of(up) if up is not None else None
        return baseline is not None and baseline.has_probes()


BARRIER_RENEW_S = 3.0  # the checkpoint barrier's TTL while its owner waits for in-flight batches
BARRIER_READ_S = 30.0  # ... and while it reads the gallery


def measure_at_cut(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, step: int) -> Checkpoint | None:
    """Measure at a consistent cut: raise the queue's barrier (nobody leases), wait until every
    batch in flight has landed, snapshot the gallery from SQL, lower the barrier, then compute.
    The items on the new model are then exactly the first n of the backfill order, the state the
    offline evaluator's curve describes. Leasing stops only for the SQL read, not the maths.
    A lease held by a dead worker is waited for at most ``lease_seconds`` (then reclaimed)."""
    with session_scope(settings.sqlalchemy_url) as s:
        up = upgrades.get_upgrade(s, upgrade_id)
        baseline = probes.baseline_of(up) if up is not None else None
        if up is None or baseline is None:
            return None
        if not baseline.has_probes():
            # No labeled items, no probes: NFR/mAP are unavailable; record progress only and
            # do not stall the workers for a measurement that cannot be made.
            point = Checkpoint(
                step=step, fraction=progress_of(up), progress=progress_of(up), at=time.time(), quiesced=False
            )
            upgrades.append_checkpoint(s, upgrade_id, point.stored())
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
    return record(settings, redis, upgrade_id, step, gallery=gallery, quiesced=quiesced)
