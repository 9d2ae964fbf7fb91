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
from service.states import ACTIVE, COMMITTED, COMPLETED, RUNNING
from service.timestamps import UtcDatetime
from service.upgrade import probes
from service.upgrade.plans import PlanRecord
from service.upgrade.progress import moved_fraction
from service.upgrade.records import Checkpoint, checkpoints_of


class Failure(BaseModel):
    item_id: int
    external_id: str
    attempts: int
    error: str
    mapped: bool = Field(
        False, description="The item was given a mapped vector at the end of the backfill (it is on the new model)."
    )

    @classmethod
    def of(cls, row: BackfillFailure, mapped: bool = False) -> Failure:
        return cls(
            item_id=row.item_id, external_id=row.external_id, attempts=row.attempts, error=row.error, mapped=mapped
        )


class UpgradeView(BaseModel):
    id: int
    from_model: str
    to_model: str
    strategy: str
    state: str
    total: int
    done: int = Field(description="Items encoded from their image with the new model.")
    mapped: int = Field(
        description="Items given their old vector through the old->new map instead: their image was missing or "
        "undecodable (they are in failures too, marked mapped), or the upgrade is vector-only."
    )
    failed: int = Field(description="Items left on the old model (failed, and no map could be had).")
    pending: int
    fraction: float | None = Field(
        description="(done + mapped) / (done + mapped + pending + failed); null while scoring, before any task exists."
    )
    vector_only: bool = Field(description="Started with vector_only: no image read, every item mapped.")
    nfr: float | None = Field(description="Latest live NFR@1 of the probe set; null = no labels / not yet.")
    map: float | None = Field(description="Latest live mAP of the probe set.")
    eta_s: float | None
    items_per_s: float | None
    queue_depth: int | None
    leased: int | None
    baseline: dict | None = Field(description="The old system on the probes: old_map, old_top1_rate, probes.")
    checkpoints: list[Checkpoint]
    failures: list[Failure] = Field(description="The first 100 items that failed; all via /failures.")
    error: str | None
    batch_size: int
    nfr_guardrail: float | None
    plan: str = Field(description="The plan asked for: paper, dual, transform or auto.")
    nfr_target: float | None = Field(
        description="auto: the probe NFR@1 the serving plan stays within; null: "
        "relative, the finished upgrade's estimated NFR@1 plus one point."
    )
    serving_plan: dict | None = Field(
        description="The plan replicas serve now (name, version); null outside an active upgrade."
    )
    created_at: UtcDatetime
    completed_at: UtcDatetime | None


def _serving_plan(session: Session, up: Upgrade) -> dict | None:
    state = catalog.peek_serving_state(session)
    if state is None or not state.plan or up.state not in ACTIVE:
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
    counts = upgrades.task_counts(session, up.id)
    base = probes.baseline_of(up)
    items_per_s = eta = None
    running_since = base.running_since if base is not None else None
    if running_since and up.done:
        end = up.completed_at.timestamp() if up.completed_at else time.time()
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
