"""Following the index log: the thread every API replica runs to stay in step with SQL.

It reads entries after the replica's position and applies them; it reloads from SQL when Redis
lost the stream (the epoch changed) or trimmed entries the replica had not applied; and every
``index_log_relay_s`` it publishes index-log entries their writers left staged in the SQL outbox
(``service.indexlog.relay``).
"""

from __future__ import annotations

import logging
import threading
import time

from service import indexlog
from service.api.serving.applying import apply
from service.api.serving.loading import load, load_from_sql
from service.api.serving.state import ReplicaState
from service.metrics import INDEX_LOG_LAG

log = logging.getLogger(__name__)

READ_COUNT = 1000  # index-log entries applied per batch


def needs_reload(replica: ReplicaState) -> bool:
    epoch = replica.redis.get(indexlog.epoch_key(replica.settings))
    epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
    if epoch != replica.epoch:
        log.warning("index log epoch changed (%s -> %s): Redis lost the stream; reloading", replica.epoch, epoch)
        return True
    info = indexlog.stream_info(replica.redis, replica.settings)
    if indexlog.missed_entries(info, replica.last_id, replica.ordinal):
        log.warning("index log trimmed past this replica's position %s; reloading from SQL", replica.last_id)
        return True
    return False


def step(replica: ReplicaState, block_ms: int | None = None) -> int:
    """Read and apply what the log holds after our position; reload from SQL if the log lost
    entries we had not applied. Returns the number of entries applied (-1 after a reload)."""
    if needs_reload(replica):
        load_from_sql(replica)
        return -1
    entries = indexlog.read_after(replica.redis, replica.settings, replica.last_id, count=READ_COUNT, block_ms=block_ms)
    if not entries:
        INDEX_LOG_LAG.set(0.0)
        return 0
    # Checked again after the read: a trim between the check above and the read would
    # otherwise hide a gap in front of these entries.
    if needs_reload(replica):
        load_from_sql(replica)
        return -1
    for entry in entries:
        apply(replica, entry)
        replica.last_id = entry.id
        replica.ordinal += 1
    INDEX_LOG_LAG.set(max(0.0, time.time() - entries[0].ts))
    return len(entries)


def relay_staged(replica: ReplicaState) -> int:
    """Publish index-log entries their writers left in the SQL outbox (service.indexlog.relay).
    A failure here (Redis or SQL away) is retried on the next round and must not make the
    follower reload its index."""
    relay_s = replica.settings.index_log_relay_s
    try:
        return indexlog.relay(replica.redis, replica.settings, relay_s)
    except Exception:  # logged; the rows stay staged for the next round
        log.exception("could not publish staged index-log entries; retrying in %.1fs", relay_s)
        return 0


class Follower:
    """The follower thread of one replica."""

    def __init__(self, replica: ReplicaState) -> None:
        self.replica = replica
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="indexlog-follower", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        replica = self.replica
        settings = replica.settings
        backoff = 0.5
        failed = False
        next_relay = time.monotonic() + settings.index_log_relay_s
        while not self._stop.is_set():
            if time.monotonic() >= next_relay:
                next_relay = time.monotonic() + settings.index_log_relay_s
                relay_staged(replica)
            try:
                if not replica.ready.is_set():
                    load(replica)
                elif failed:
                    # After a failure mid-batch the replica may hold part of a batch: rather than
                    # retry the same entry forever, rebuild from the source of truth (searches
                    # keep using the current index until the new one is swapped in).
                    load_from_sql(replica)
                failed = False
                step(replica, block_ms=settings.index_log_poll_ms)
                backoff = 0.5
            except Exception:
                failed = True
                log.exception("index-log follower failed; reloading from SQL in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
