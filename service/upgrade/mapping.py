"""Mapped vectors: an item the backfill cannot encode (its image missing or undecodable after
``HOTREFRESH_MAX_ATTEMPTS``) or an upgrade that reads no image at all (``vector_only``) gets the
new-space vector the ``transform`` plan would score it with: its old vector through the old->new
map T, L2-normalised like every stored vector (docs/workers.md, "Upgrades without images").

When: in one set-based step at the end of the backfill, before completion
(``service.upgrade.progress.try_complete``): nothing is pending then, so T is fitted once, on
every backfilled pair (a seeded sample of at most ``HOTREFRESH_PLAN_FIT_PAIRS``, the fit the
checkpoints make), and no item that fails later can miss it. An item that fails earlier waits
in ``failed`` until then; its failure row stays (the view marks it mapped).

Which map: the backfilled pairs' when there are at least ``MIN_PAIRS`` of them (the gallery's
own data, under the upgrade's ``HOTREFRESH_PLAN_TRANSFORM``); else the map the new model carries
from its training (``models.carried_map``), if it carries one from exactly the gallery's model;
else none, and the failed items stay on the old model as before (commit then refuses). A
vector-only upgrade has no backfilled pair and uses the carried map (checked at its start).

Each chunk is one unit of work under the upgrade row's exclusive lock (it raises the row's
counter; two callers that share-locked the row and then updated it would deadlock on
PostgreSQL): its tasks claimed (``pending``/``failed`` -> ``mapped``, one
conditional UPDATE, so two workers completing at once map each item once), the vectors and
the items' active model written, the upgrade's ``mapped`` counter raised and the move staged
for the index log. A worker killed between chunks leaves the rest claimed by nobody; the next
completion maps them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import redis as redis_lib
from sqlalchemy.orm import Session

from models.carried_map import CarriedMap, CarriedMapError, carried_map
from models.plans.linear_map import MIN_PAIRS, LinearMap, fit_transform
from service.db.schema import ModelRow, Upgrade
from service.db.session import read_scope
from service.indexport import Change, unit_of_work
from service.metrics import BACKFILL_ITEMS
from service.repositories import catalog, upgrades
from service.repositories import items as item_repo
from service.settings import Settings
from service.states import RUNNING

log = logging.getLogger(__name__)

MAP_CHUNK = 5_000  # items per unit of work: bounded transactions at any gallery size


class NoMap(Exception):
    """No old->new map can be had for an upgrade, with the reason in the message."""


def carried_for(old: ModelRow, new: ModelRow) -> LinearMap:
    """The map ``new`` carries from exactly ``old`` (name, weights and dimensions), or :class:`NoMap`."""
    try:
        carried: CarriedMap | None = carried_map((new.meta or {}).get("extra"))
    except CarriedMapError as e:
        raise NoMap(f"model {new.name!r}: {e}") from None
    if carried is None:
        raise NoMap(f"model {new.name!r} carries no old->new map (train it with hotrefresh train --old)")
    if carried.from_model != old.name or carried.from_hash != old.content_hash:
        raise NoMap(
            f"model {new.name!r} carries a map from {carried.from_model!r} "
            f"(weights {carried.from_hash[:12]}), not from {old.name!r} (weights {old.content_hash[:12]})"
        )
    if carried.map.weight.shape != (old.embedding_dim, new.embedding_dim):
        raise NoMap(
            f"model {new.name!r} carries a map of shape {carried.map.weight.shape}, "
            f"not {(old.embedding_dim, new.embedding_dim)}"
        )
    return carried.map


def backfilled_pairs(session: Session, settings: Settings, up: Upgrade) -> tuple[np.ndarray, np.ndarray]:
    """(old, new) vectors of the items this upgrade encoded (a seeded sample of at most
    ``plan_fit_pairs``, as the checkpoints' fit draws it)."""
    done = np.asarray(upgrades.item_ids_with_status(session, up.id, "done"), np.int64)
    if len(done) > settings.plan_fit_pairs:
        done = np.sort(np.random.default_rng(int(up.id)).choice(done, settings.plan_fit_pairs, replace=False))
    old_ids, old = item_repo.get_vectors(session, up.from_model, done.tolist())
    new_ids, new = item_repo.get_vectors(session, up.to_model, old_ids.tolist())
    keep = np.isin(old_ids, new_ids)  # both ascending by id
    return old[keep], new


@dataclass(frozen=True)
class FittedMap:
    map: LinearMap
    source: str  # "backfilled pairs" or "carried by <model>"


def fit_map(session: Session, settings: Settings, up: Upgrade) -> FittedMap:
    """The map this upgrade's mapped items get (module docstring, "Which map"), or :class:`NoMap`."""
    pairs = 0
    if not up.vector_only:
        old, new = backfilled_pairs(session, settings, up)
        pairs = len(old)
        if pairs >= MIN_PAIRS:
            kind = settings.plan_transform if old.shape[1] == new.shape[1] else "lstsq"
            return FittedMap(fit_transform(old, new, kind), "backfilled pairs")
    old_row, new_row = catalog.get_model(session, up.from_model), catalog.get_model(session, up.to_model)
    if old_row is None or new_row is None:
        raise NoMap(f"model {up.from_model if old_row is None else up.to_model!r} is no longer registered")
    try:
        return FittedMap(carried_for(old_row, new_row), f"carried by {new_row.name}")
    except NoMap as e:
        if up.vector_only:
            raise
        raise NoMap(f"{pairs} backfilled pairs (fewer than {MIN_PAIRS}) and {e}") from None


def mapped_vectors(t: LinearMap, old: np.ndarray) -> np.ndarray:
    """``old`` through T, L2-normalised (a zero image stays zero)."""
    out = t.apply(old)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.ascontiguousarray(out / np.where(norms > 0, norms, 1.0), np.float32)


def map_tasks(settings: Settings, redis: redis_lib.Redis, upgrade_id: int, status: str) -> int:
    """Map every item of the running upgrade whose task is in ``status`` (``failed``, or
    ``pending`` in a vector-only upgrade). Returns how many items this call moved; raises
    :class:`NoMap` (changing nothing) when there is something to map but no map."""
    with read_scope(settings.sqlalchemy_url) as s:
        up = upgrades.get_upgrade(s, upgrade_id)
        if up is None or up.state != RUNNING or not upgrades.count_status(s, upgrade_id, status):
            return 0
        fitted = fit_map(s, settings, up)
        from_model, to_model = up.from_model, up.to_model
    moved = 0
    while True:
        with unit_of_work(settings, redis) as uow:
            s = uow.session
            if upgrades.lock_state(s, upgrade_id, counting=True) != RUNNING:  # chunks of racing callers queue here
                break
            claimed = upgrades.claim_for_mapping(s, upgrade_id, status, MAP_CHUNK)
            if not claimed:
                break
            ids, old = item_repo.get_vectors(s, from_model, claimed)
            present = item_repo.set_active_model(s.connection(), to_model, ids.tolist()) if len(ids) else []
            if len(present) < len(claimed):  # deleted meanwhile (or, unexpectedly, without an old vector)
                log.warning("upgrade %s: %d claimed items not mapped", upgrade_id, len(claimed) - len(present))
            if present:
                rows = np.searchsorted(ids, present)
                vectors = mapped_vectors(fitted.map, old[rows])
                item_repo.upsert_embeddings(s, to_model, present, vectors, mapped=True)
                upgrades.count_mapped(s, upgrade_id, len(present))
                uow.record(Change.move(to_model, present))
        moved += len(present)
    if moved:
        BACKFILL_ITEMS.labels(str(upgrade_id), "mapped").inc(moved)
        log.info("upgrade %s: %d %s items mapped (map: %s)", upgrade_id, moved, status, fitted.source)
    return moved
