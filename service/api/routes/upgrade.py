"""``/upgrade``: start a hot refresh and control it; ``/upgrades``: the history, a page at a
time (docs/workers.md, "HTTP API").

The state rules live in ``service.states``; this module only maps them to HTTP (a refused
transition is 409) and dispatches Celery work after the SQL change has committed.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from models import plans as plan_registry
from models import uncertainty
from service import dispatch
from service.api.deps import AdminDep, RedisDep, SessionDep, SettingsDep
from service.api.schemas import StoredText, error_responses
from service.errors import NotFound
from service.repositories import upgrades
from service.settings import Settings
from service.upgrade import control
from service.upgrade.choices import PlanName, StateName, StrategyName, UpgradeState
from service.upgrade.view import Failure, UpgradeView, failures_of, view

log = logging.getLogger(__name__)

router = APIRouter(prefix="/upgrade", tags=["upgrade"])
history_router = APIRouter(prefix="/upgrades", tags=["upgrade"])

# Bounded to the database's BIGINT range: a larger number is a 422, not a driver overflow (500).
FailureLimit = Annotated[int, Query(ge=1, le=100_000, description="At most this many failures.")]
UpgradeId = Annotated[int, Path(ge=1, le=2**63 - 1, description="The upgrade's id (POST /upgrade answers it).")]


# A throttle: finite and above 0 (JSON's NaN and Infinity, which Python's parser takes, are 422s).
ItemsPerSecond = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]


class UpgradeIn(BaseModel):
    """Start a hot refresh of the gallery onto ``model``; every other field has a default."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"model": "new", "plan": "auto", "batch_size": 256, "nfr_guardrail": 0.1}]}
    )

    model: StoredText = Field(
        min_length=1, max_length=128, description="A registered model, compatible with the gallery's."
    )
    strategy: StrategyName | None = Field(
        None,
        description="Backfill order: " + uncertainty.describe() + ". Default: margin under a plan that needs only "
        "the hardest items first (the paper's), mixed under the others, random for a new model of another "
        "dimension or without a classifier.",
    )
    # strict: JSON true is not the number 1, nor "8" the number 8 (a 422, not a silent coercion)
    batch_size: int | None = Field(None, ge=1, le=4096, strict=True, description="Items per leased batch.")
    nfr_guardrail: float | None = Field(
        None, ge=0.0, le=1.0, strict=True, description="Pause the upgrade by itself when live NFR@1 exceeds this."
    )
    plan: PlanName = Field(
        plan_registry.AUTO,
        description="Query plan during the upgrade: " + plan_registry.describe() + ".",
    )
    nfr_target: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        strict=True,
        description="auto: the probe NFR@1 a plan must stay within (default HOTREFRESH_NFR_TARGET).",
    )
    vector_only: bool = Field(
        False,
        strict=True,
        description="Read no image: every item gets its old vector through the old->new map the new model "
        "carries from its training (422 when it carries none from the gallery's model). No probes, so no live "
        "NFR/mAP.",
    )
    items_per_second: ItemsPerSecond | None = Field(
        None,
        description="Throttle the backfill to this many items per second over all workers together "
        "(change it live: POST /upgrade/{id}/throttle); default: unlimited.",
    )


class ThrottleIn(BaseModel):
    """The backfill's new rate, for every worker's next batch."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"items_per_second": 200.0}]})

    # Required, null allowed: lifting the throttle is said, never implied by a missing field.
    items_per_second: ItemsPerSecond | None = Field(
        description="Items per second over all workers together, above 0; null: unlimited."
    )


class ThrottleOut(BaseModel):
    """The upgrade's throttle after the change."""

    id: int = Field(description="The upgrade's id.")
    state: UpgradeState = Field(description="Its state (the throttle does not change it).")
    items_per_second: float | None = Field(description="The rate now in force; null: unlimited.")


class UpgradeCreated(BaseModel):
    """The upgrade just started: scoring runs in a worker, then the backfill."""

    id: int = Field(description="The upgrade's id, for /upgrade/{upgrade_id}.")
    state: UpgradeState = Field(description="Its state now (scoring).")
    total: int = Field(description="Gallery items to re-encode.")


class StateOut(BaseModel):
    """An upgrade's state after an operator's action."""

    id: int = Field(description="The upgrade's id.")
    state: UpgradeState = Field(description="Its state after the action.")


class UpgradePage(BaseModel):
    """One page of the upgrade history, newest first."""

    items: list[UpgradeView] = Field(description="Upgrades, newest first, each as GET /upgrade/{id} shows it.")
    next: int | None = Field(
        description="Pass as `before` for the next (older) page; null on the last page.",
    )


MAX_PAGE = 100


def _view(session: SessionDep, redis: RedisDep, settings: Settings, upgrade_id: int | None) -> UpgradeView:
    up = upgrades.latest_upgrade(session) if upgrade_id is None else upgrades.get_upgrade(session, upgrade_id)
    if up is None:
        detail = "no upgrade yet" if upgrade_id is None else f"upgrade {upgrade_id} not found"
        raise NotFound(detail)
    return view(session, up, redis, settings)


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=UpgradeCreated,
    dependencies=[AdminDep],
    responses=error_responses(401, 403, 404, 409, 422),
)
def start_upgrade(body: UpgradeIn, settings: SettingsDep, redis: RedisDep) -> UpgradeCreated:
    up = control.start(
        settings,
        redis,
        model=body.model,
        strategy=body.strategy,
        batch_size=body.batch_size,
        nfr_guardrail=body.nfr_guardrail,
        plan=body.plan,
        nfr_target=body.nfr_target,
        items_per_second=body.items_per_second,
        vector_only=body.vector_only,
    )
    dispatch.try_send("scoring", dispatch.send_score, settings, up.id)
    return UpgradeCreated(id=up.id, state=up.state, total=up.total)


@router.get("", response_model=UpgradeView, responses=error_responses(404))
def latest(session: SessionDep, redis: RedisDep, settings: SettingsDep) -> UpgradeView:
    """The most recent upgrade."""
    return _view(session, redis, settings, None)


@history_router.get("", response_model=UpgradePage, responses=error_responses(422))
def history(
    session: SessionDep,
    redis: RedisDep,
    settings: SettingsDep,
    state: Annotated[
        StateName | None,
        Query(description="Only upgrades in this state."),
    ] = None,
    before: Annotated[
        int | None, Query(ge=1, le=2**63 - 1, description="Only upgrades older than this id (the `next` of a page).")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Upgrades per page.")] = 20,
) -> UpgradePage:
    """Every upgrade, newest first, a page at a time. A finished upgrade's counts come from its
    row (written when it finished), so a page costs no count of the tasks of finished upgrades."""
    rows = upgrades.list_upgrades(session, state=state, before=before, limit=limit + 1)
    page = rows[:limit]
    return UpgradePage(
        items=[view(session, up, redis, settings) for up in page],
        next=page[-1].id if len(rows) > limit else None,
    )


@router.get("/{upgrade_id}", response_model=UpgradeView, responses=error_responses(404))
def get_upgrade(upgrade_id: UpgradeId, session: SessionDep, redis: RedisDep, settings: SettingsDep) -> UpgradeView:
    return _view(session, redis, settings, upgrade_id)


@router.get("/{upgrade_id}/failures", response_model=list[Failure], responses=error_responses(404))
def failures(upgrade_id: UpgradeId, session: SessionDep, limit: FailureLimit = 1000) -> list[Failure]:
    """Every item whose re-encoding failed ``max_attempts`` times, with the last error, and whether
    it was then given a mapped vector (service/upgrade/mapping.py)."""
    if upgrades.get_upgrade(session, upgrade_id) is None:
        raise NotFound(f"upgrade {upgrade_id} not found")
    return failures_of(session, upgrade_id, limit)


@router.post(
    "/{upgrade_id}/throttle",
    response_model=ThrottleOut,
    dependencies=[AdminDep],
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Throttle an upgrade's backfill",
)
def throttle_upgrade(upgrade_id: UpgradeId, body: ThrottleIn, settings: SettingsDep, redis: RedisDep) -> ThrottleOut:
    """Change the backfill's rate while it runs (scoring, running or paused; 409 after): every
    worker holds the new rate from its next batch, within a second or so. null lifts the throttle."""
    state = control.throttle(settings, redis, upgrade_id, body.items_per_second)
    return ThrottleOut(id=upgrade_id, state=state, items_per_second=body.items_per_second)


def _act(settings: Settings, redis: RedisDep, upgrade_id: int, action: str) -> StateOut:
    state = control.act(settings, redis, upgrade_id, action)
    if action == "resume":
        dispatch.try_send("drain chains", dispatch.send_drains, settings, upgrade_id)
    return StateOut(id=upgrade_id, state=state)


_ACTION_DOCS = {
    "pause": "running -> paused: workers stop leasing (batches in flight land).",
    "resume": "paused -> running.",
    "cancel": "scoring|running|paused -> cancelled: every item and queries back on the old model at once.",
    "rollback": "any state before committed -> rolled_back: back to the old model at once, no re-encoding.",
    "commit": "completed -> committed: the old model's vectors are deleted (409 while items failed).",
}


def _route(action: str) -> None:
    def handler(upgrade_id: UpgradeId, settings: SettingsDep, redis: RedisDep) -> StateOut:
        return _act(settings, redis, upgrade_id, action)

    handler.__name__ = f"{action}_upgrade"
    router.add_api_route(
        f"/{{upgrade_id}}/{action}",
        handler,
        methods=["POST"],
        response_model=StateOut,
        dependencies=[AdminDep],
        responses=error_responses(401, 403, 404, 409),
        summary=f"{action.capitalize()} an upgrade",
        description=_ACTION_DOCS[action],
    )


for _action in _ACTION_DOCS:
    _route(_action)
