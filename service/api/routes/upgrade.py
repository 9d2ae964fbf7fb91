"""``/upgrade``: start a hot refresh and control it (docs/workers.md, "HTTP API").

The state rules live in ``service.states``; this module only maps them to HTTP (a refused
transition is 409) and dispatches Celery work after the SQL change has committed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, status
from pydantic import AfterValidator, BaseModel, Field

from models import plans as plan_registry
from models import uncertainty
from service import dispatch
from service.api.deps import AdminDep, RedisDep, SessionDep, SettingsDep
from service.api.schemas import StoredText, error_responses
from service.errors import NotFound
from service.repositories import upgrades
from service.settings import Settings
from service.upgrade import control
from service.upgrade.view import Failure, UpgradeView, failures_of, view

log = logging.getLogger(__name__)

router = APIRouter(prefix="/upgrade", tags=["upgrade"])

# Bounded to the database's BIGINT range: a larger number is a 422, not a driver overflow (500).
UpgradeId = Annotated[int, Path(ge=1, le=2**63 - 1)]


def _one_of(choices: Callable[[], tuple[str, ...]], what: str) -> Callable[[str], str]:
    """A validator against a registry read when the request arrives, so a plan or an ordering
    registered after this module was imported is accepted (and listed in the schema)."""

    def check(value: str) -> str:
        if value not in choices():
            raise ValueError(f"unknown {what} {value!r}; expected one of {list(choices())}")
        return value

    return check


def _enum(choices: Callable[[], tuple[str, ...]]) -> Callable[[dict[str, Any]], None]:
    def extra(schema: dict[str, Any]) -> None:
        schema["enum"] = list(choices())

    return extra


PlanName = Annotated[str, AfterValidator(_one_of(plan_registry.requestable, "plan"))]
OrderingName = Annotated[str, AfterValidator(_one_of(uncertainty.ordering_names, "strategy"))]


class UpgradeIn(BaseModel):
    model: StoredText = Field(
        min_length=1, max_length=128, description="A registered model, compatible with the gallery's."
    )
    strategy: OrderingName | None = Field(
        None,
        description="Backfill order: " + uncertainty.describe() + ". Default: margin under a plan that needs only "
        "the hardest items first (the paper's), mixed under the others, random for a new model of another "
        "dimension or without a classifier.",
        json_schema_extra=_enum(uncertainty.ordering_names),
    )
    # strict: JSON true is not the number 1, nor "8" the number 8 (a 422, not a silent coercion)
    batch_size: int | None = Field(None, ge=1, le=4096, strict=True, description="Items per leased batch.")
    nfr_guardrail: float | None = Field(
        None, ge=0.0, le=1.0, strict=True, description="Pause the upgrade by itself when live NFR@1 exceeds this."
    )
    plan: PlanName = Field(
        plan_registry.AUTO,
        description="Query plan during the upgrade: " + plan_registry.describe() + ".",
        json_schema_extra=_enum(plan_registry.requestable),
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


class UpgradeCreated(BaseModel):
    id: int
    state: str
    total: int


class StateOut(BaseModel):
    id: int
    state: str


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
        vector_only=body.vector_only,
    )
    dispatch.try_send("scoring", dispatch.send_score, settings, up.id)
    return UpgradeCreated(id=up.id, state=up.state, total=up.total)


@router.get("", response_model=UpgradeView, responses=error_responses(404))
def latest(session: SessionDep, redis: RedisDep, settings: SettingsDep) -> UpgradeView:
    """The most recent upgrade."""
    return _view(session, redis, settings, None)


@router.get("/{upgrade_id}", response_model=UpgradeView, responses=error_responses(404))
def get_upgrade(upgrade_id: UpgradeId, session: SessionDep, redis: RedisDep, settings: SettingsDep) -> UpgradeView:
    return _view(session, redis, settings, upgrade_id)


@router.get("/{upgrade_id}/failures", response_model=list[Failure], responses=error_responses(404))
def failures(upgrade_id: UpgradeId, session: SessionDep, limit: int = Query(1000, ge=1, le=100_000)) -> list[Failure]:
    """Every item whose re-encoding failed ``max_attempts`` times, with the last error, and whether
    it was then given a mapped vector (service/upgrade/mapping.py)."""
    if upgrades.get_upgrade(session, upgrade_id) is None:
        raise NotFound(f"upgrade {upgrade_id} not found")
    return failures_of(session, upgrade_id, limit)


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
