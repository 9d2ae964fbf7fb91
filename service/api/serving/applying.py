"""Applying changes to a replica: index-log entries, and a request's own write (read-your-writes).

Every change goes through :func:`sync_ids` or a full load, and both converge the replica to what
SQL says *now* (the item's active model and that model's stored vector; absent = deleted).
Applying an entry twice, late, or after a newer one therefore leaves the same state, which is
what lets a replica replay the log from a point before its SQL read, and lets a request apply
its own write at once before the follower sees the entry.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable

import numpy as np

from service import indexlog
from service.api.serving.loading import load_from_sql, refresh_query_model
from service.api.serving.state import ReplicaState
from service.db.session import session_scope
from service.index import UnknownSegmentError
from service.repositories import items as item_repo

log = logging.getLogger(__name__)


def sync_ids(replica: ReplicaState, ids: Iterable[int]) -> None:
    """Bring these items to their current SQL state in this replica."""
    ids = sorted({int(i) for i in ids})
    if not ids:
        return
    with replica.apply_lock:
        with session_scope(replica.url) as s:
            states = item_repo.get_item_states(s, ids)
        converge(replica, ids, states)
        replica.update_gauges()


def converge(replica: ReplicaState, ids: list[int], states: dict[int, item_repo.ItemState]) -> None:
    index = replica.index
    gone: list[int] = []
    adds: dict[str, list[item_repo.ItemState]] = defaultdict(list)
    moves: dict[str, list[item_repo.ItemState]] = defaultdict(list)
    for item_id in ids:
        st = states.get(item_id)
        current = index.model_of(item_id)
        if st is None or st.vector is None:
            if current is not None:
                gone.append(item_id)
        elif current is None:
            adds[st.active_model].append(st)
        elif current != st.active_model:
            moves[st.active_model].append(st)
    if gone:
        index.delete(np.asarray(gone, dtype=np.int64))
        for item_id in gone:
            replica.external_ids.pop(item_id, None)
    for model, group in adds.items():
        index.add(model, *_arrays(group))
        replica.external_ids.update((st.id, st.external_id) for st in group)
    for model, group in moves.items():
        move_ids, vecs = _arrays(group)
        index.move(move_ids, model, vecs)


def apply(replica: ReplicaState, entry: indexlog.Entry) -> None:
    if entry.op in ("add", "move", "delete"):
        sync_ids(replica, entry.ids)
    elif entry.op == "switch":
        refresh_query_model(replica)
    elif entry.op == "rollback":
        rollback(replica, entry.model)
    elif entry.op == "commit":
        commit(replica, entry.model)
    elif entry.op == "reset":
        load_from_sql(replica)
    else:
        log.warning("ignoring index-log entry %s with unknown op %r", entry.id, entry.op)


def ids_where(replica: ReplicaState, pred: Callable[[str | None], bool]) -> list[int]:
    """Items of this replica whose segment satisfies ``pred`` (O(N): rare operations only)."""
    ids = list(replica.external_ids)
    return [i for i, m in zip(ids, replica.index.model_of(ids), strict=True) if pred(m)]


def rollback(replica: ReplicaState, to_model: str | None) -> None:
    if to_model is None:
        load_from_sql(replica)
        return
    with replica.apply_lock, contextlib.suppress(UnknownSegmentError):
        replica.index.rollback(to_model)
    # Items inserted during the upgrade were never in the old segment, and a replica started
    # mid-upgrade has no parked vectors at all: those come from SQL.
    sync_ids(replica, ids_where(replica, lambda m: m != to_model))
    refresh_query_model(replica)
    replica.update_gauges()


def commit(replica: ReplicaState, dropped_model: str | None) -> None:
    if dropped_model is None:
        return
    if replica.index.counts().get(dropped_model, 0):
        # Anything still live there must move first, or dropping the segment would lose it.
        sync_ids(replica, ids_where(replica, lambda m: m == dropped_model))
    with replica.apply_lock:
        with contextlib.suppress(UnknownSegmentError):
            replica.index.drop_segment(dropped_model)
        replica.update_gauges()
    refresh_query_model(replica)
    replica.encoders.release(dropped_model)  # no plan needs the old encoder any more


def _arrays(group: list[item_repo.ItemState]) -> tuple[np.ndarray, np.ndarray]:
    """Ids and vectors of states that all have a vector (``converge`` sorts out the others)."""
    ids = np.asarray([st.id for st in group], dtype=np.int64)
    vecs = np.stack([st.vector for st in group if st.vector is not None]).astype(np.float32, copy=False)
    return ids, vecs
