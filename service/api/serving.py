"""The serving state of one API process: its replica of the mixed index, the id -> external id
map, the query model, the encoder cache, and the thread that keeps the replica in step with the
index log.

Every change to the replica goes through :meth:`Serving.sync_ids` or a full :meth:`Serving.load`,
and both converge the replica to what SQL says *now* (the item's active model and that model's
stored vector; absent = deleted). Applying an entry twice, late, or after a newer one therefore
leaves the same state, which is what lets a replica replay the log from a point before its SQL
read, and lets a request apply its own write at once (read-your-writes) before the follower
sees the entry.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis as redis_lib
from PIL import Image

from service import indexlog, snapshots
from service.db import repositories as repo
from service.db.session import read_scope, session_scope
from service.errors import Conflict, Unavailable
from service.index import MixedIndex, QueryPlan, UnknownSegmentError, factory_from_settings
from service.metrics import GALLERY_VECTORS, INDEX_LOG_LAG
from service.registry import EncoderCache
from service.settings import Settings

if TYPE_CHECKING:
    from models.checkpoint import LoadedModel

log = logging.getLogger(__name__)

READ_COUNT = 1000  # index-log entries applied per batch


class NotReady(Unavailable):
    """The replica has not finished loading from SQL."""


class NoModel(Conflict):
    """No model is registered yet, so nothing can be encoded."""


def new_index(settings: Settings) -> MixedIndex:
    return MixedIndex.from_settings(settings)


class Serving:
    def __init__(self, settings: Settings, redis: redis_lib.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.encoders = EncoderCache(settings.device)
        self.index = new_index(settings)
        self.external_ids: dict[int, str] = {}
        self.query_model: str | None = None
        self.ready = threading.Event()
        self.last_id = "0-0"  # last index-log entry reflected in this replica
        self.ordinal = 0  # how many entries had ever been appended up to and including last_id
        self.epoch: str | None = None
        self.reloads = 0  # full loads from SQL (start-up included)
        self.loaded_from: str | None = None  # "sql" or "snapshot", for operators and tests
        self._apply_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._known_models: set[str] = set()

    @property
    def url(self) -> str:
        return self.settings.sqlalchemy_url

    # --- loading ---------------------------------------------------------------------------

    def load(self) -> None:
        """Rebuild the replica: from the newest usable snapshot plus the log since, else from SQL."""
        if not self._load_snapshot():
            self.load_from_sql()

    def load_from_sql(self) -> None:
        """Rebuild the replica from SQL: every item's vector for its active model.

        The log position and epoch are read *before* SQL, so every change the SQL read might
        miss has its entry after that position and is replayed (idempotently) afterwards."""
        with self._apply_lock:
            started = time.perf_counter()
            epoch = indexlog.ensure_epoch(self.redis, self.settings)
            info = indexlog.stream_info(self.redis, self.settings)
            index = new_index(self.settings)
            external: dict[int, str] = {}
            # A read-only snapshot: a reload of a large gallery takes seconds, and must not hold
            # SQLite's write lock (and every writer) for that long.
            with read_scope(self.url) as s:
                state = repo.peek_serving_state(s)
                query_model = state.query_model if state is not None else None
                for chunk in repo.iter_active_vectors(s):
                    index.add(chunk.model, chunk.ids, chunk.vectors)
                    external.update(zip(chunk.ids.tolist(), chunk.external_ids, strict=True))
            self.index, self.external_ids, self.query_model = index, external, query_model
            self.last_id, self.ordinal, self.epoch = info.last_id, info.entries_added or 0, epoch
            self.reloads += 1
            self.loaded_from = "sql"
            self._update_gauges()
            log.info("index loaded from SQL: %d items %s in %.2fs (log position %s)",
                     len(external), index.counts(), time.perf_counter() - started, info.last_id)
        self.ready.set()

    def _load_snapshot(self) -> bool:
        root = self.settings.snapshots_path
        snap = snapshots.latest(root)
        if snap is None:
            return False
        with self._apply_lock:
            epoch = indexlog.ensure_epoch(self.redis, self.settings)
            info = indexlog.stream_info(self.redis, self.settings)
            if snap.database != snapshots.database_identity(self.url):
                log.info("snapshot %s is of another database; loading from SQL", snap.directory)
                return False
            if snap.epoch != epoch or indexlog.missed_entries(info, snap.last_id, snap.ordinal):
                log.info("snapshot %s is older than the index log retains; loading from SQL", snap.directory)
                return False
            started = time.perf_counter()
            try:
                index = snapshots.load(root, snap, factory_from_settings(self.settings))
            except (ValueError, OSError) as e:
                log.warning("snapshot %s unusable (%s); loading from SQL", snap.directory, e)
                return False
            # External ids are cheap to read (no vectors); ids changed after the snapshot are
            # brought up to date by replaying the log from the snapshot's position.
            with read_scope(self.url) as s:
                external = repo.external_id_map(s)
            self.index, self.external_ids, self.query_model = index, external, snap.query_model
            self.last_id, self.ordinal, self.epoch = snap.last_id, snap.ordinal, epoch
            self.loaded_from = "snapshot"
            self._update_gauges()
            log.info("index loaded from snapshot %s: %s in %.2fs (log position %s)",
                     snap.directory, index.counts(), time.perf_counter() - started, snap.last_id)
        self.refresh_query_model()
        self.ready.set()
        return True

    def save_snapshot(self) -> Path | None:
        """Write this replica's index and log position (at shutdown), for a fast restart."""
        if not self.ready.is_set():
            return None
        with self._apply_lock:
            info = snapshots.SnapshotInfo(
                directory=snapshots.new_name(), last_id=self.last_id, ordinal=self.ordinal,
                epoch=self.epoch or "", query_model=self.query_model,
                database=snapshots.database_identity(self.url),
            )
            return snapshots.save(self.settings.snapshots_path, self.index, info)

    # --- applying changes ------------------------------------------------------------------

    def sync_ids(self, ids: Iterable[int]) -> None:
        """Bring these items to their current SQL state in this replica."""
        ids = sorted({int(i) for i in ids})
        if not ids:
            return
        with self._apply_lock:
            with session_scope(self.url) as s:
                states = repo.get_item_states(s, ids)
            self._converge(ids, states)
            self._update_gauges()

    def _converge(self, ids: list[int], states: dict[int, repo.ItemState]) -> None:
        index = self.index
        gone: list[int] = []
        adds: dict[str, list[repo.ItemState]] = defaultdict(list)
        moves: dict[str, list[repo.ItemState]] = defaultdict(list)
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
                self.external_ids.pop(item_id, None)
        for model, group in adds.items():
            index.add(model, *_arrays(group))
            self.external_ids.update((st.id, st.external_id) for st in group)
        for model, group in moves.items():
            move_ids, vecs = _arrays(group)
            index.move(move_ids, model, vecs)

    def refresh_query_model(self) -> None:
        with session_scope(self.url) as s:
            self.query_model = repo.get_serving_state(s).query_model

    def apply(self, entry: indexlog.Entry) -> None:
        if entry.op in ("add", "move", "delete"):
            self.sync_ids(entry.ids)
        elif entry.op == "switch":
            self.refresh_query_model()
        elif entry.op == "rollback":
            self._rollback(entry.model)
        elif entry.op == "commit":
            self._commit(entry.model)
        elif entry.op == "reset":
            self.load_from_sql()
        else:
            log.warning("ignoring index-log entry %s with unknown op %r", entry.id, entry.op)

    def _ids_where(self, pred: Callable[[str | None], bool]) -> list[int]:
        """Items of this replica whose segment satisfies ``pred`` (O(N): rare operations only)."""
        ids = list(self.external_ids)
        return [i for i, m in zip(ids, self.index.model_of(ids), strict=True) if pred(m)]

    def _rollback(self, to_model: str | None) -> None:
        if to_model is None:
            self.load_from_sql()
            return
        with self._apply_lock, contextlib.suppress(UnknownSegmentError):
            self.index.rollback(to_model)
        # Items inserted during the upgrade were never in the old segment, and a replica started
        # mid-upgrade has no parked vectors at all: those come from SQL.
        self.sync_ids(self._ids_where(lambda m: m != to_model))
        self.refresh_query_model()
        self._update_gauges()

    def _commit(self, dropped_model: str | None) -> None:
        if dropped_model is None:
            return
        if self.index.counts().get(dropped_model, 0):
            # Anything still live there must move first, or dropping the segment would lose it.
            self.sync_ids(self._ids_where(lambda m: m == dropped_model))
        with self._apply_lock:
            with contextlib.suppress(UnknownSegmentError):
                self.index.drop_segment(dropped_model)
            self._update_gauges()
        self.refresh_query_model()

    # --- following the log ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="indexlog-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = 0.5
        failed = False
        next_relay = time.monotonic() + self.settings.index_log_relay_s
        while not self._stop.is_set():
            if time.monotonic() >= next_relay:
                next_relay = time.monotonic() + self.settings.index_log_relay_s
                self.relay_staged()
            try:
                if not self.ready.is_set():
                    self.load()
                elif failed:
                    # After a failure mid-batch the replica may hold part of a batch: rather than
                    # retry the same entry forever, rebuild from the source of truth (searches
                    # keep using the current index until the new one is swapped in).
                    self.load_from_sql()
                failed = False
                self.step(block_ms=self.settings.index_log_poll_ms)
                backoff = 0.5
            except Exception:
                failed = True
                log.exception("index-log follower failed; reloading from SQL in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    def relay_staged(self) -> int:
        """Publish index-log entries their writers left in the SQL outbox (service.indexlog.relay).
        A failure here (Redis or SQL away) is retried on the next round and must not make the
        follower reload its index."""
        try:
            return indexlog.relay(self.redis, self.settings, self.settings.index_log_relay_s)
        except Exception:  # noqa: BLE001 - logged; the rows stay staged for the next round
            log.exception("could not publish staged index-log entries; retrying in %.1fs",
                          self.settings.index_log_relay_s)
            return 0

    def step(self, block_ms: int | None = None) -> int:
        """Read and apply what the log holds after our position; reload from SQL if the log lost
        entries we had not applied. Returns the number of entries applied (-1 after a reload)."""
        if self.needs_reload():
            self.load_from_sql()
            return -1
        entries = indexlog.read_after(self.redis, self.settings, self.last_id, count=READ_COUNT,
                                      block_ms=block_ms)
        if not entries:
            INDEX_LOG_LAG.set(0.0)
            return 0
        # Checked again after the read: a trim between the check above and the read would
        # otherwise hide a gap in front of these entries.
        if self.needs_reload():
            self.load_from_sql()
            return -1
        for entry in entries:
            self.apply(entry)
            self.last_id = entry.id
            self.ordinal += 1
        INDEX_LOG_LAG.set(max(0.0, time.time() - entries[0].ts))
        return len(entries)

    def needs_reload(self) -> bool:
        epoch = self.redis.get(indexlog.epoch_key(self.settings))
        epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
        if epoch != self.epoch:
            log.warning("index log epoch changed (%s -> %s): Redis lost the stream; reloading",
                        self.epoch, epoch)
            return True
        info = indexlog.stream_info(self.redis, self.settings)
        if indexlog.missed_entries(info, self.last_id, self.ordinal):
            log.warning("index log trimmed past this replica's position %s; reloading from SQL", self.last_id)
            return True
        return False

    # --- reading ----------------------------------------------------------------------------

    def require_ready(self) -> None:
        if not self.ready.is_set():
            raise NotReady("the index is still loading")

    def encoder(self, model: str) -> LoadedModel:
        cached = self.encoders.peek(model)
        if cached is not None:
            return cached
        with read_scope(self.url) as s:
            return self.encoders.get(s, model)

    def encode_query(self, image: Image.Image) -> tuple[str, np.ndarray]:
        self.require_ready()
        model = self.query_model
        if model is None:
            raise NoModel("no model is registered yet; POST /models first")
        return model, self.encoder(model).embed_images([image])

    def search_vector(self, query: np.ndarray, k: int) -> list[tuple[str, float, str]]:
        """(external_id, score, model) of the top ``k``, with the paper's plan over every segment."""
        index = self.index
        if not index.counts():
            return []
        hits = index.search(QueryPlan.single(query), k)[0]
        external = self.external_ids
        out = []
        for hit in hits:
            ext = external.get(int(hit.id))
            if ext is not None:  # deleted between the search and this lookup
                out.append((ext, float(hit.score), hit.model))
        return out

    def _update_gauges(self) -> None:
        counts = self.index.counts()
        for model in self._known_models - set(counts):
            GALLERY_VECTORS.labels(model=model).set(0)
        for model, n in counts.items():
            GALLERY_VECTORS.labels(model=model).set(n)
        self._known_models |= set(counts)


def _arrays(group: list[repo.ItemState]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray([st.id for st in group], dtype=np.int64)
    vecs = np.stack([st.vector for st in group]).astype(np.float32, copy=False)
    return ids, vecs
