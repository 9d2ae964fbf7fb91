"""Starting an upgrade and the operator's actions on it, each one unit of work (the SQL
transaction, and the index change it records published after the commit: service.indexport),
then Redis housekeeping.

Used by the HTTP routes (service/routes/upgrade.py) and by workers (auto-commit). Nothing here
touches Celery: the caller dispatches the scoring/drain tasks after these return.
"""

from __future__ import annotations

import logging

import redis as redis_lib

from models.plans import AUTO, get_plan, requestable
from models.uncertainty import RANDOM, default_ordering, get_ordering, ordering_names, without_classifier
from service.db.schema import Upgrade
from service.db.session import session_scope
from service.errors import BadRequest, Conflict, NotFound, UnknownModel
from service.indexport import Change, unit_of_work
from service.keys import THROTTLE_RATE_TTL_S
from service.metrics import remove_upgrade
from service.queue import BackfillQueue
from service.repositories import catalog, upgrades
from service.repositories import items as item_repo
from service.settings import Settings
from service.states import CANCELLED, COMPLETED, ROLLED_BACK, SCORING, THROTTLEABLE, TransitionError
from service.throttle import Throttle, check_rate
from service.upgrade import chooser, mapping, plans

log = logging.getLogger(__name__)


class UpgradeRequestError(BadRequest):
    """An upgrade request that cannot be honoured as asked (422)."""


class UpgradeConflict(Conflict):
    """Another upgrade owns the gallery, or the state forbids the action (409)."""


class UpgradeNotFound(NotFound):
    pass


def start(
    settings: Settings,
    redis: redis_lib.Redis,
    *,
    model: str,
    strategy: str | None = None,
    batch_size: int | None = None,
    nfr_guardrail: float | None = None,
    plan: str = AUTO,
    nfr_target: float | None = None,
    items_per_second: float | None = None,
    vector_only: bool = False,
) -> Upgrade:
    """Validate, create the upgrade row and switch query *and* gallery model to ``model`` at once
    (the hot refresh): from this commit on, queries follow the upgrade's query plan against the
    mixed index and new inserts are encoded with the new model. Returns the row in state ``scoring``.

    A plan may refuse the two models (``models.plans.Plan.refusal``: the paper's needs a
    backward-compatible model of the same dimension); ``auto`` takes any new model and chooses
    among the plans that do not refuse it. The uncertainty orders put old vectors through the new
    classifier, so they need the same dimension and a head; ``random`` does not. Without a
    ``strategy``: :func:`default_strategy` (``random`` for a vector-only upgrade, whose order
    nothing follows).

    ``vector_only``: no image is read; every item gets its old vector through the map the new
    model carries from its training (``service.upgrade.mapping``), refused when it carries none
    from exactly the gallery's model."""
    if strategy is not None and strategy not in ordering_names():
        raise UpgradeRequestError(f"unknown strategy {strategy!r}; expected one of {list(ordering_names())}")
    if batch_size is not None and not 1 <= batch_size <= 4096:
        raise UpgradeRequestError("batch_size must be between 1 and 4096")
    if nfr_guardrail is not None and not 0.0 <= nfr_guardrail <= 1.0:
        raise UpgradeRequestError("nfr_guardrail is a ratio between 0 and 1")
    if nfr_target is not None and not 0.0 <= nfr_target <= 1.0:
        raise UpgradeRequestError("nfr_target is a ratio between 0 and 1")
    if plan not in requestable():
        raise UpgradeRequestError(f"unknown plan {plan!r}; expected one of {list(requestable())}")
    items_per_second = _rate(items_per_second)
    with unit_of_work(settings, redis) as uow:
        s = uow.session
        serving = catalog.lock_serving_state(s)  # concurrent starts queue here
        target = catalog.get_model(s, model)
        if target is None:
            raise UnknownModel(f"model {model!r} is not registered")
        running = upgrades.active_upgrade(s)
        if running is not None:
            hint = " (commit or roll it back first)" if running.state == COMPLETED else ""
            raise UpgradeConflict(f"upgrade {running.id} is {running.state}{hint}")
        current = catalog.get_model(s, serving.gallery_model) if serving.gallery_model else None
        if current is None:
            raise UpgradeRequestError("the service has no gallery model yet; register one and ingest first")
        if target.name == current.name:
            raise UpgradeRequestError(f"model {model!r} already is the gallery model")
        if vector_only:
            try:
                mapping.carried_for(current, target)
            except mapping.NoMap as e:
                raise UpgradeRequestError(
                    f"a vector-only upgrade needs the map the new model carries from the gallery model: {e}"
                ) from None
            strategy = strategy or RANDOM.name
        if strategy is None:
            strategy = default_strategy(
                plan, target.embedding_dim == current.embedding_dim, has_classifier=target.num_classes > 0
            )
        uses_classifier = get_ordering(strategy).uses_classifier
        if target.num_classes == 0 and uses_classifier:
            raise UpgradeRequestError(
                f"model {model!r} has no classifier head, and the {strategy!r} order scores old vectors "
                f"with the new classifier; use strategy {' or '.join(without_classifier())} "
                "(or register the model with its head)"
            )
        if target.embedding_dim != current.embedding_dim and uses_classifier:
            raise UpgradeRequestError(
                f"model {model!r} embeds in {target.embedding_dim} dimensions, the gallery model "
                f"{current.name!r} in {current.embedding_dim}, and the {strategy!r} order puts old vectors "
                f"through the new classifier; use strategy {' or '.join(without_classifier())}"
            )
        refusal = None if plan == AUTO else get_plan(plan).refusal(chooser.shape_of(current, target))
        if refusal is not None:
            raise UpgradeRequestError(
                f"model {model!r} embeds in {target.embedding_dim} dimensions and is declared compatible with "
                f"{target.compatible_with!r}, the gallery model {current.name!r} embeds in {current.embedding_dim}: "
                f"{refusal}; "
                f"plan {AUTO} chooses among the plans that take it"
            )
        total = item_repo.count_on_model(s, current.name)
        row = upgrades.add_upgrade(
            s,
            Upgrade(
                from_model=current.name,
                to_model=target.name,
                strategy=strategy,
                state=SCORING,
                batch_size=batch_size or settings.batch_size,
                nfr_guardrail=nfr_guardrail,
                total=total,
                done=0,
                failed=0,
                checkpoints=[],
                plan=plan,
                nfr_target=nfr_target,
                items_per_second=items_per_second,
                vector_only=vector_only,
                mapped=0,
            ),
        )
        catalog.set_serving_state(s, gallery_model=target.name, query_model=target.name)
        catalog.set_plan(s, plans.starting(plan, current.name, target.name).to_json())
        uow.record(Change.switch(target.name))
    return row


def default_strategy(plan: str, same_dimension: bool, *, has_classifier: bool = True) -> str:
    """The backfill order an upgrade takes when none is asked for (``models.uncertainty.default_ordering``):
    the plan says whether it needs every prefix of the backfill to be an unbiased sample (``auto``
    may serve any plan, so it does)."""
    unbiased = plan == AUTO or get_plan(plan).wants_unbiased_backfill
    return default_ordering(unbiased, classifier_usable=same_dimension and has_classifier)


def _return_to_old_model(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, action: str) -> str:
    """Rollback and cancel: every item and both serving models back to the old model, from the
    old vectors still in SQL (no re-encoding), the new model's vectors dropped."""
    with unit_of_work(settings, redis) as uow:
        s = uow.session
        up = upgrades.get_upgrade(s, upgrade_id)
        if up is None:
            raise UpgradeNotFound(f"upgrade {upgrade_id} does not exist")
        new_state = upgrades.transition(s, upgrade_id, action)
        item_repo.return_to_model(s, from_model=up.to_model, to_model=up.from_model)
        catalog.set_serving_state(s, gallery_model=up.from_model, query_model=up.from_model)
        catalog.set_plan(s, None)  # the old system exactly: its query against its vectors
        uow.record(Change.rollback(up.from_model))
    BackfillQueue(redis, settings, upgrade_id).clear()
    remove_upgrade(upgrade_id)  # this process's series; workers drop theirs when they see the state
    return new_state


def commit(settings: Settings, redis: redis_lib.Redis, upgrade_id: int) -> str:
    """Retire the old model: delete its vectors. Refused while any item still lives on it (items
    whose re-encoding failed), because dropping the old segment would make them unsearchable."""
    with unit_of_work(settings, redis) as uow:
        s = uow.session
        up = upgrades.get_upgrade(s, upgrade_id)
        if up is None:
            raise UpgradeNotFound(f"upgrade {upgrade_id} does not exist")
        if up.state == COMPLETED:
            left = item_repo.count_on_model(s, up.from_model)
            if left:
                raise UpgradeConflict(
                    f"{left} items are still on the old model {up.from_model!r} (their re-encoding failed, "
                    f"see the upgrade's failures); delete or re-upload them, or roll back"
                )
        new_state = upgrades.transition(s, upgrade_id, "commit")
        item_repo.delete_model_vectors(s, up.from_model)
        catalog.set_plan(s, None)  # one segment left: the new model's query against it
        uow.record(Change.commit(up.from_model))
    BackfillQueue(redis, settings, upgrade_id).clear()
    remove_upgrade(upgrade_id)
    return new_state


def act(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, action: str) -> str:
    """An operator action by name; raises :class:`TransitionError` (409) when not allowed."""
    if action in ("rollback", "cancel"):
        return _return_to_old_model(settings, redis, upgrade_id, action)
    if action == "commit":
        return commit(settings, redis, upgrade_id)
    if action not in ("pause", "resume"):
        raise UpgradeRequestError(f"unknown action {action!r}")
    with session_scope(settings.sqlalchemy_url) as s:
        up = upgrades.get_upgrade(s, upgrade_id)
        if up is None:
            raise UpgradeNotFound(f"upgrade {upgrade_id} does not exist")
        to_model = up.to_model
        fields = {"error": None} if action == "resume" else {}
        state = upgrades.transition(s, upgrade_id, action, **fields)
    if action == "pause":
        _relog_landed_leases(settings, redis, upgrade_id, to_model)
    return state


def _relog_landed_leases(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, to_model: str) -> None:
    """A worker killed between its SQL commit and its index-log append leaves a batch that SQL
    has moved but no replica has heard of, until its lease expires and the batch is redone. A
    pause is where operators look at a quiet system, so close that window now: log again every
    leased item SQL already has on the new model (replicas apply entries idempotently)."""
    try:
        leased = BackfillQueue(redis, settings, upgrade_id).leased_ids()
    except redis_lib.RedisError:
        return
    with unit_of_work(settings, redis) as uow:
        landed = upgrades.done_among(uow.session, upgrade_id, leased)
        if landed:
            uow.record(Change.move(to_model, landed))


def _rate(items_per_second: float | None) -> float | None:
    try:
        return check_rate(items_per_second)
    except ValueError as exc:
        raise UpgradeRequestError(str(exc)) from None


def throttle(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, items_per_second: float | None) -> str:
    """Set the backfill's rate live (None: unlimited): SQL first (the truth), then the copy the
    workers' bucket reads, so every worker holds it from its next take. Refused (409) once the
    backfill is over, and changes nothing then. Returns the upgrade's state.

    Should Redis refuse the copy, the rate is still set: workers read it from SQL when the copy
    they hold expires (``keys.THROTTLE_RATE_TTL_S``)."""
    rate = _rate(items_per_second)
    with session_scope(settings.sqlalchemy_url) as s:
        state = upgrades.set_throttle(s, upgrade_id, rate)
        if state is None:
            up = upgrades.get_upgrade(s, upgrade_id)
            if up is None:
                raise UpgradeNotFound(f"upgrade {upgrade_id} does not exist")
            raise UpgradeConflict(
                f"cannot throttle upgrade {upgrade_id} in state {up.state!r}: its backfill is over "
                f"(allowed in: {', '.join(THROTTLEABLE)})"
            )
    try:
        Throttle(redis, settings, upgrade_id).publish(rate)
    except redis_lib.RedisError:
        log.warning(
            "upgrade %s: the new rate is in SQL but not in Redis; workers take it within %s s",
            upgrade_id,
            THROTTLE_RATE_TTL_S,
            exc_info=True,
        )
    return state


def fail(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, error: str) -> None:
    """An upgrade that cannot go on (e.g. the new checkpoint is unreadable): back to the old
    model like a rollback, so the service keeps answering with what worked, state ``failed``."""
    try:
        _return_to_old_model(settings, redis, upgrade_id, "fail")
    except TransitionError:
        return
    with session_scope(settings.sqlalchemy_url) as s:
        upgrades.set_error(s, upgrade_id, error)


__all__ = [
    "start",
    "act",
    "commit",
    "fail",
    "throttle",
    "UpgradeRequestError",
    "UpgradeConflict",
    "UpgradeNotFound",
    "TransitionError",
    "CANCELLED",
    "ROLLED_BACK",
]
