"""Loading a replica: from the newest usable snapshot plus the index log since, else from SQL.

Every load reads the log position *before* the data, so a change the read might miss has its
entry after that position and is replayed (idempotently) by the follower afterwards.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from service import indexlog, snapshots
from service.api.serving.state import ReplicaState, new_index
from service.db.session import read_scope, session_scope
from service.index import factory_from_settings
from service.repositories import catalog
from service.repositories import items as item_repo
from service.upgrade import plans

log = logging.getLogger(__name__)


def load(replica: ReplicaState) -> None:
    """Rebuild the replica: from the newest usable snapshot plus the log since, else from SQL."""
    if not load_snapshot(replica):
        load_from_sql(replica)


def load_from_sql(replica: ReplicaState) -> None:
    """Rebuild the replica from SQL: every item's vector for its active model.

    The log position and epoch are read *before* SQL, so every change the SQL read might
    miss has its entry after that position and is replayed (idempotently) afterwards."""
    with replica.apply_lock:
        started = time.perf_counter()
        epoch = indexlog.ensure_epoch(replica.redis, replica.settings)
        info = indexlog.stream_info(replica.redis, replica.settings)
        index = new_index(replica.settings)
        external: dict[int, str] = {}
        # A read-only snapshot: a reload of a large gallery takes seconds, and must not hold
        # SQLite's write lock (and every writer) for that long.
        with read_scope(replica.url) as s:
            state = catalog.peek_serving_state(s)
            query_model = state.query_model if state is not None else None
            plan = plans.parse(state.plan) if state is not None else None
            for chunk in item_repo.iter_active_vectors(s):
                index.add(chunk.model, chunk.ids, chunk.vectors)
                external.update(zip(chunk.ids.tolist(), chunk.external_ids, strict=True))
        replica.index, replica.external_ids, replica.query_model = index, external, query_model
        replica.plan = plan
        replica.last_id, replica.ordinal, replica.epoch = info.last_id, info.entries_added or 0, epoch
        replica.reloads += 1
        replica.loaded_from = "sql"
        replica.update_gauges()
        log.info(
            "index loaded from SQL: %d items %s in %.2fs (log position %s)",
            len(external),
            index.counts(),
            time.perf_counter() - started,
            info.last_id,
        )
    replica.ready.set()


def load_snapshot(replica: ReplicaState) -> bool:
    root = replica.settings.snapshots_path
    snap = snapshots.latest(root)
    if snap is None:
        return False
    with replica.apply_lock:
        epoch = indexlog.ensure_epoch(replica.redis, replica.settings)
        info = indexlog.stream_info(replica.redis, replica.settings)
        if snap.database != snapshots.database_identity(replica.url):
            log.info("snapshot %s is of another database; loading from SQL", snap.directory)
            return False
        if snap.epoch != epoch or indexlog.missed_entries(info, snap.last_id, snap.ordinal):
            log.info("snapshot %s is older than the index log retains; loading from SQL", snap.directory)
            return False
        started = time.perf_counter()
        try:
            index = snapshots.load(root, snap, factory_from_settings(replica.settings))
        except (ValueError, OSError) as e:
            log.warning("snapshot %s unusable (%s); loading from SQL", snap.directory, e)
            return False
        # External ids are cheap to read (no vectors); ids changed after the snapshot are
        # brought up to date by replaying the log from the snapshot's position.
        with read_scope(replica.url) as s:
            external = item_repo.external_id_map(s)
        replica.index, replica.external_ids, replica.query_model = index, external, snap.query_model
        replica.last_id, replica.ordinal, replica.epoch = snap.last_id, snap.ordinal, epoch
        replica.loaded_from = "snapshot"
        replica.update_gauges()
        log.info(
            "index loaded from snapshot %s: %s in %.2fs (log position %s)",
            snap.directory,
            index.counts(),
            time.perf_counter() - started,
            snap.last_id,
        )
    refresh_query_model(replica)
    replica.ready.set()
    return True


def save_snapshot(replica: ReplicaState) -> Path | None:
    """Write this replica's index and log position (at shutdown), for a fast restart."""
    if not replica.ready.is_set():
        return None
    with replica.apply_lock:
        info = snapshots.SnapshotInfo(
            directory=snapshots.new_name(),
            last_id=replica.last_id,
            ordinal=replica.ordinal,
            epoch=replica.epoch or "",
            query_model=replica.query_model,
            database=snapshots.database_identity(replica.url),
        )
        return snapshots.save(replica.settings.snapshots_path, replica.index, info)


def refresh_query_model(replica: ReplicaState) -> None:
    with session_scope(replica.url) as s:
        state = catalog.get_serving_state(s)
        replica.query_model, replica.plan = state.query_model, plans.parse(state.plan)
