"""The in-process, replicated adapter of the serving index: this API process's own replica of the
mixed index, kept equal to SQL by following the index log (``service.indexlog``).

Every change, whether an index-log entry (:meth:`Replica.apply`), a request's own write
(:meth:`Replica.catch_up`) or a relay's late ``reset``, goes straight to one handler per kind
of change, and every handler converges to what SQL says *now* (the item's active model and that
model's stored vector; absent = deleted). Applying an entry twice, late, or after a newer one
therefore leaves the same state: that is what lets a replica replay the log from a point before
its SQL read, and a request apply its own write before the follower sees the entry.

Every load reads the log position *before* the data, so a change the read might miss has its
entry after that position and is replayed (idempotently) afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import redis as redis_lib

from service import indexlog, snapshots
from service.api.serving.follower import Follower
from service.api.serving.port import Hit, IndexStatus, IndexView
from service.db.session import read_scope
from service.index import MixedIndex, QueryPlan, UnknownSegmentError, factory_from_settings
from service.indexport import Change, LogPublisher, relay
from service.metrics import GALLERY_VECTORS, INDEX_LOG_LAG
from service.repositories import catalog
from service.repositories import items as item_repo
from service.settings import Settings
from service.upgrade import plans
from service.upgrade.plans import ServingPlan

log = logging.getLogger(__name__)

READ_COUNT = 1000  # index-log entries applied per batch


@dataclass(frozen=True)
class Position:
    last_id: str = "0-0"  # last index-log entry reflected in this replica
    ordinal: int = 0  # how many entries had ever been appended up to and including last_id
    epoch: str | None = None


class Replica:
    """One process's replica (see the module's docstring); implements ``ServingIndex``."""

    def __init__(
        self, settings: Settings, redis: redis_lib.Redis, *, on_retired: Callable[[str], None] | None = None
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._url = settings.sqlalchemy_url
        self._on_retired = on_retired or (lambda _model: None)
        self._index = MixedIndex.from_settings(settings)
        self._external: dict[int, str] = {}
        self._query_model: str | None = None
        self._plan: ServingPlan | None = None
        self._position = Position()
        self._reloads = 0
        self._loaded_from: str | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()  # held by every change: loads, entries, a request's own write
        self._gauged: set[str] = set()
        self._follower = Follower(self, settings)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._follower.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._follower.stop(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def load(self) -> None:
        """From the newest usable snapshot plus the log since, else from SQL."""
        if not self._load_snapshot():
            self.reload()

    def reload(self) -> None:
        """Rebuild from SQL: every item's vector for its active model. A read-only snapshot: a
        reload of a large gallery takes seconds and must not hold SQLite's write lock that long."""
        with self._lock:
            started = time.perf_counter()
            epoch = indexlog.ensure_epoch(self._redis, self._settings)
            info = indexlog.stream_info(self._redis, self._settings)
            index = MixedIndex.from_settings(self._settings)
            external: dict[int, str] = {}
            with read_scope(self._url) as s:
                state = catalog.peek_serving_state(s)
                for chunk in item_repo.iter_active_vectors(s):
                    index.add(chunk.model, chunk.ids, chunk.vectors)
                    external.update(zip(chunk.ids.tolist(), chunk.external_ids, strict=True))
            self._index, self._external = index, external
            self._query_model = state.query_model if state is not None else None
            self._plan = plans.parse(state.plan) if state is not None else None
            self._position = Position(info.last_id, info.entries_added or 0, epoch)
            self._reloads += 1
            self._loaded_from = "sql"
            self._update_gauges()
            log.info(
                "index loaded from SQL: %d items %s in %.2fs (log position %s)",
                len(external),
                index.counts(),
                time.perf_counter() - started,
                info.last_id,
            )
        self._ready.set()

    def _load_snapshot(self) -> bool:
        root = self._settings.snapshots_path
        snap = snapshots.latest(root)
        if snap is None:
            return False
        with self._lock:
            epoch = indexlog.ensure_epoch(self._redis, self._settings)
            info = indexlog.stream_info(self._redis, self._settings)
            if snap.database != snapshots.database_identity(self._url):
                log.info("snapshot %s is of another database; loading from SQL", snap.directory)
                return False
            if snap.epoch != epoch or indexlog.missed_entries(info, snap.last_id, snap.ordinal):
                log.info("snapshot %s is older than the index log retains; loading from SQL", snap.directory)
                return False
            started = time.perf_counter()
            try:
                index = snapshots.load(root, snap, factory_from_settings(self._settings))
            except (ValueError, OSError) as e:
                log.warning("snapshot %s unusable (%s); loading from SQL", snap.directory, e)
                return False
            # External ids are cheap to read (no vectors); ids changed after the snapshot are
            # brought up to date by replaying the log from the snapshot's position.
            with read_scope(self._url) as s:
                self._external = item_repo.external_id_map(s)
            self._index = index
            self._position = Position(snap.last_id, snap.ordinal, epoch)
            self._loaded_from = "snapshot"
            self._refresh_serving_state()
            self._update_gauges()
            log.info(
                "index loaded from snapshot %s: %s in %.2fs (log position %s)",
                snap.directory,
                index.counts(),
                time.perf_counter() - started,
                snap.last_id,
            )
        self._ready.set()
        return True

    def not_ready_because(self) -> str:
        return "the index is still loading"

    def save_snapshot(self) -> Path | None:
        """Write this replica's index and log position (at shutdown), for a fast restart."""
        if not self._ready.is_set():
            return None
        with self._lock:
            info = snapshots.SnapshotInfo(
                directory=snapshots.new_name(),
                last_id=self._position.last_id,
                ordinal=self._position.ordinal,
                epoch=self._position.epoch or "",
                query_model=self._query_model,
                database=snapshots.database_identity(self._url),
            )
            return snapshots.save(self._settings.snapshots_path, self._index, info)

    # -- search ----------------------------------------------------------------------------------
    def view(self) -> IndexView:
        index = self._index
        return IndexView(self._query_model, self._plan, {m: index.dim(m) for m, n in index.counts().items() if n})

    def search(self, view: IndexView, plan: QueryPlan, k: int) -> list[Hit]:
        hits = self._index.search(plan, k)[0]
        external = self._external
        out = []
        for hit in hits:
            ext = external.get(int(hit.id))
            if ext is not None:  # deleted between the search and this lookup
                out.append(Hit(ext, float(hit.score), hit.model))
        return out

    def model_of(self, item_id: int) -> str | None:
        return self._index.model_of(int(item_id))

    # -- the operator's and the tests' view ------------------------------------------------------
    def status(self) -> IndexStatus:
        index = self._index
        return IndexStatus(
            ready=self._ready.is_set(),
            query_model=self._query_model,
            plan=self._plan,
            counts=index.counts(),
            dims={m: index.dim(m) for m in index.models()},
            parked=index.parked_counts(),
            position=self._position.last_id,
            ordinal=self._position.ordinal,
            reloads=self._reloads,
            loaded_from=self._loaded_from,
        )

    def items(self) -> dict[int, str]:
        ids = sorted(self._external)
        return {i: m for i, m in zip(ids, self._index.model_of(ids), strict=True) if m is not None}

    # -- following the log -----------------------------------------------------------------------
    def needs_reload(self) -> bool:
        """Whether Redis lost the stream (the epoch changed) or trimmed entries not yet applied."""
        epoch = self._redis.get(indexlog.epoch_key(self._settings))
        epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
        pos = self._position
        if epoch != pos.epoch:
            log.warning("index log epoch changed (%s -> %s): Redis lost the stream; reloading", pos.epoch, epoch)
            return True
        info = indexlog.stream_info(self._redis, self._settings)
        if indexlog.missed_entries(info, pos.last_id, pos.ordinal):
            log.warning("index log trimmed past this replica's position %s; reloading from SQL", pos.last_id)
            return True
        return False

    def poll(self, block_ms: int | None = None) -> int:
        """Read and apply what the log holds after our position; reload from SQL if the log lost
        entries we had not applied. Returns the number of entries applied (-1 after a reload)."""
        if self.needs_reload():
            self.reload()
            return -1
        entries = indexlog.read_after(
            self._redis, self._settings, self._position.last_id, count=READ_COUNT, block_ms=block_ms
        )
        if not entries:
            INDEX_LOG_LAG.set(0.0)
            return 0
        # Checked again after the read: a trim between the check above and the read would
        # otherwise hide a gap in front of these entries.
        if self.needs_reload():
            self.reload()
            return -1
        for entry in entries:
            self.apply(entry)
            pos = self._position
            self._position = Position(entry.id, pos.ordinal + 1, pos.epoch)
        INDEX_LOG_LAG.set(max(0.0, time.time() - entries[0].ts))
        return len(entries)

    def apply(self, entry: indexlog.Entry) -> None:
        """One index-log entry (idempotent; the position is the caller's to advance)."""
        self._change(entry.op, entry.model, entry.ids)

    def catch_up(self, changes: Iterable[Change]) -> None:
        for change in changes:
            self._change(change.op, change.model, change.item_ids)

    def relay(self) -> int:
        """Publish what writers left staged in the outbox (``service.indexport.relay``). A failure
        (Redis or SQL away) is retried next round and must not make the follower reload."""
        relay_s = self._settings.index_log_relay_s
        try:
            return relay(self._settings, LogPublisher(self._settings, self._redis), relay_s)
        except Exception:  # logged; the rows stay staged for the next round
            log.exception("could not publish staged index changes; retrying in %.1fs", relay_s)
            return 0

    # -- one handler per kind of change ----------------------------------------------------------
    def _change(self, op: str, model: str | None, ids: list[int]) -> None:
        if op in ("add", "move", "delete"):
            self._sync(ids)
        elif op == "switch":
            with self._lock:
                self._refresh_serving_state()
        elif op == "rollback":
            self._rollback(model)
        elif op == "commit":
            self._commit(model)
        elif op == "reset":
            self.reload()
        else:
            log.warning("ignoring index change with unknown op %r", op)

    def _sync(self, ids: Iterable[int]) -> None:
        """Bring these items to their current SQL state (gone: delete, absent: add, another
        segment: move)."""
        ids = sorted({int(i) for i in ids})
        if not ids:
            return
        with self._lock:
            with read_scope(self._url) as s:
                states = item_repo.get_item_states(s, ids)
            index = self._index
            gone: list[int] = []
            adds: dict[str, list[item_repo.ItemState]] = defaultdict(list)
            moves: dict[str, list[item_repo.ItemState]] = defaultdict(list)
            for item_id, current in zip(ids, index.model_of(ids), strict=True):
                st = states.get(item_id)
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
                    self._external.pop(item_id, None)
            for model, group in adds.items():
                index.add(model, *_arrays(group))
                self._external.update((st.id, st.external_id) for st in group)
            for model, group in moves.items():
                move_ids, vecs = _arrays(group)
                index.move(move_ids, model, vecs)
            self._update_gauges()

    def _ids_where(self, pred: Callable[[str | None], bool]) -> list[int]:
        """Items whose segment satisfies ``pred`` (O(N): rollbacks and commits only)."""
        ids = list(self._external)
        return [i for i, m in zip(ids, self._index.model_of(ids), strict=True) if pred(m)]

    def _rollback(self, to_model: str | None) -> None:
        if to_model is None:
            self.reload()
            return
        with self._lock, contextlib.suppress(UnknownSegmentError):
            self._index.rollback(to_model)
        # Items inserted during the upgrade were never in the old segment, and a replica started
        # mid-upgrade has no parked vectors at all: those come from SQL.
        self._sync(self._ids_where(lambda m: m != to_model))
        with self._lock:
            self._refresh_serving_state()

    def _commit(self, dropped_model: str | None) -> None:
        if dropped_model is None:
            return
        if self._index.counts().get(dropped_model, 0):
            # Anything still live there must move first, or dropping the segment would lose it.
            self._sync(self._ids_where(lambda m: m == dropped_model))
        with self._lock:
            with contextlib.suppress(UnknownSegmentError):
                self._index.drop_segment(dropped_model)
            self._refresh_serving_state()
            self._update_gauges()
        self._on_retired(dropped_model)  # no plan needs the old encoder any more

    def _refresh_serving_state(self) -> None:
        """The query model and the serving plan, as SQL has them now (caller holds the lock)."""
        with read_scope(self._url) as s:
            state = catalog.peek_serving_state(s)
        self._query_model = state.query_model if state is not None else None
        self._plan = plans.parse(state.plan) if state is not None else None

    def _update_gauges(self) -> None:
        counts = self._index.counts()
        for model in self._gauged - set(counts):
            GALLERY_VECTORS.labels(model=model).set(0)
        for model, n in counts.items():
            GALLERY_VECTORS.labels(model=model).set(n)
        self._gauged |= set(counts)


def _arrays(group: list[item_repo.ItemState]) -> tuple[np.ndarray, np.ndarray]:
    """Ids and vectors of states that all have a vector (``_sync`` sorts out the others)."""
    ids = np.asarray([st.id for st in group], dtype=np.int64)
    vecs = np.stack([st.vector for st in group if st.vector is not None]).astype(np.float32, copy=False)
    return ids, vecs
