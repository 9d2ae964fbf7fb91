"""What ``GET /upgrade`` answers: one upgrade's state, progress, live measurements and failures.

A pydantic model, so the API serves it as its schema (``service.api.routes.upgrade``) and the
fields, their types and their documentation are written once, here.
"""

from __future__ import annotations

import time

import redis as redis_lib
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from service.db.schema import BackfillFailure, Upgrade
from service.queue import BackfillQueue
from service.records import parse
from service.repositories import catalog, upgrades
from service.settings import Settings
from service.states import ACTIVE, COMMITTED, COMPLETED, FINISHED, RUNNING, THROTTLEABLE
from service.throttle import Throttle
from service.timestamps import UtcDatetime, as_utc
from service.upgrade import probes
from service.upgrade.choices import Plan, Strategy, UpgradeState
from service.upgrade.plans import PlanRecord
from service.upgrade.progress import moved_fraction
from service.upgrade.records import Checkpoint, checkpoints_of


class Failure(BaseModel):
    """A gallery item the backfill gave up on: it is given a mapped vector at the end of
    the backfill when a map can be had (``mapped``), else it stays on the old model and commit waits for it."""

    item_id: int = Field(description="The item's internal id.")
    external_id: str = Field(description="The item's id as the client gave it.")
    attempts: int = Field(description="How many times its re-encoding was tried (HOTREFRESH_MAX_ATTEMPTS).")
    error: str = Field(description="The last attempt's error.")
    mapped: bool = Field(
        False, description="The item was given a mapped vector at the end of the backfill (it is on the new model)."
    )

    @classmethod
    def of(cls, row: BackfillFailure, mapped: bool = False) -> Failure:
        return cls(
            item_id=row.item_id, external_id=row.external_id, attempts=row.attempts, error=row.error, mapped=mapped
        )


class UpgradeView(BaseModel):
    """One upgrade: its state, progress, live measurements and failures."""

    id: int = Field(description="The upgrade's id.")
    from_model: str = Field(description="The model the gallery is upgraded from.")
    to_model: str = Field(description="The model it is upgraded to.")
    strategy: Strategy = Field(description="The backfill order (the poor first: margin, least, ...).")
    state: UpgradeState = Field(description="Where the upgrade is in its state machine (docs/design.md).")
    total: int = Field(description="Gallery items to re-encode, counted at the start.")
    done: int = Field(description="Items encoded from their image with the new model.")
    mapped: int = Field(
        description="Items given their old vector through the old->new map instead: their image was missing or "
        "undecodable (they are in failures too, marked mapped), or the upgrade is vector-only."
    )
    failed: int = Field(description="Items left on the old model (failed, and no map could be had).")
    pending: int = Field(description="Items still to re-encode.")
    fraction: float | None = Field(
        description="(done + mapped) / (done + mapped + pending + failed); null while scoring, before any task exists."
    )
    vector_only: bool = Field(description="Started with vector_only: no image read, every item mapped.")
    nfr: float | None = Field(description="Latest live NFR@1 of the probe set; null = no labels / not yet.")
    map: float | None = Field(description="Latest live mAP of the probe set.")
    eta_s: float | None = Field(description="Seconds until done at the rate so far; 0 once completed; null: unknown.")
    items_per_s: float | None = Field(description="Items re-encoded per second since running; null before any.")
    items_per_second: float | None = Field(
        description="The backfill's throttle, items per second over all workers together; null: unlimited."
    )
    recent_items_per_s: float | None = Field(
        description="Measured by the throttle: items leased per second over the last full 5 s, all workers "
        "together; null when unlimited.",
    )
    queue_depth: int | None = Field(
        description="Items waiting in the upgrade's Redis window (at most HOTREFRESH_QUEUE_WINDOW; the rest "
        "wait in SQL: see pending); null: Redis unreachable."
    )
    leased: int | None = Field(description="Items leased by workers now; null: Redis unreachable.")
    baseline: dict | None = Field(description="The old system on the probes: old_map, old_top1_rate, probes.")
    checkpoints: list[Checkpoint] = Field(description="Every live measurement so far, in order.")
    failures: list[Failure] = Field(description="The first 100 items that failed; all via /failures.")
    error: str | None = Field(description="Why the upgrade failed; null unless it did.")
    batch_size: int = Field(description="Items per leased batch.")
    nfr_guardrail: float | None = Field(description="Live NFR@1 above which it pauses itself; null: none.")
    plan: Plan = Field(description="The query plan asked for (a registered plan or auto).")
    nfr_target: float | None = Field(
        description="auto: the probe NFR@1 the serving plan stays within; null: "
        "relative, the finished upgrade's estimated NFR@1 plus one point."
    )
    serving_plan: dict | None = Field(
        description="The plan replicas serve now (name, version); null outside an active upgrade."
    )
    created_at: UtcDatetime = Field(description="When it was started (UTC).")
    completed_at: UtcDatetime | None = Field(description="When every item was on the new model (UTC); null: not yet.")


def _serving_plan(session: Session, up: Upgrade) -> dict | None:
    if up.state not in ACTIVE:  # asked first: a page of history reads no serving state
        return None
    state = catalog.peek_serving_state(session)
    if state is None or not state.plan:
        return None
    plan = parse(PlanRecord, state.plan, "serving plan (serving_state.plan)")
    if plan.new_model != up.to_model:
        return None
    return {
        "name": plan.name,
        "version": plan.version,
        "transform_pairs": plan.transform.pairs if plan.transform is not None else None,
    }


def failures_of(session: Session, upgrade_id: int, limit: int) -> list[Failure]:
    rows = upgrades.list_failures(session, upgrade_id, limit)
    mapped = upgrades.mapped_among(session, upgrade_id, [f.item_id for f in rows])
    return [Failure.of(f, f.item_id in mapped) for f in rows]


def view(
    session: Session, up: Upgrade, redis: redis_lib.Redis | None, settings: Settings, failures_limit: int = 100
) -> UpgradeView:
    counts = upgrades.counts_of(session, up)
    base = probes.baseline_of(up)
    items_per_s = eta = None
    running_since = base.running_since if base is not None else None
    if running_since and up.done:
        # A finished upgrade's rate ends when it did (a rollback has no completed_at, but its
        # transition stamped updated_at), so its view does not change with the clock.
        ended = up.completed_at or (up.updated_at if up.state in FINISHED else None)
        end = as_utc(ended).timestamp() if ended else time.time()
        elapsed = max(1e-6, end - float(running_since))
        items_per_s = up.done / elapsed
        if up.state == RUNNING:
            eta = counts["pending"] / items_per_s
        elif up.state in (COMPLETED, COMMITTED):
            eta = 0.0
    depth = leased = recent = None
    if redis is not None:
        try:
            q = BackfillQueue(redis, settings, up.id)
            depth, leased = q.depth(), q.leased()
            if up.items_per_second is not None and up.state in THROTTLEABLE:
                recent = Throttle(redis, settings, up.id).measured()
        except redis_lib.RedisError:
            pass
    summary = None
    if base is not None:
        summary = {"old_map": base.old_map, "old_top1_rate": base.old_top1_rate, "map_k": base.map_k}
        summary["probes"] = len(base.probe_ids)
    return UpgradeView(
        id=up.id,
        from_model=up.from_model,
        to_model=up.to_model,
        strategy=up.strategy,
        state=up.state,
        total=up.total,
        done=counts["done"],
        mapped=counts["mapped"],
        failed=counts["failed"],
        pending=counts["pending"],
        fraction=moved_fraction(counts, up.state),
        nfr=up.nfr,
        map=up.map,
        eta_s=eta,
        items_per_s=items_per_s,
        items_per_second=up.items_per_second,
        recent_items_per_s=recent,
        queue_depth=depth,
        leased=leased,
        baseline=summary,
        checkpoints=checkpoints_of(up.id, up.checkpoints),
        failures=failures_of(session, up.id, failures_limit),
        vector_only=bool(up.vector_only),
        error=up.error,
        batch_size=up.batch_size,
        nfr_guardrail=up.nfr_guardrail,
        plan=up.plan,
        nfr_target=up.nfr_target if up.nfr_target is not None else settings.nfr_target,
        serving_plan=_serving_plan(session, up),
        created_at=up.created_at,
        completed_at=up.completed_at,
    )
