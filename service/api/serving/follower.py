"""The follower thread of a replica (``service.api.serving.replica``): it loads the replica, then
applies the index log as it grows; it reloads from SQL after a failure mid-batch; and every
``index_log_relay_s`` it publishes what writers left staged in the outbox.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from service.settings import Settings

if TYPE_CHECKING:
    from service.api.serving.replica import Replica

log = logging.getLogger(__name__)


class Follower:
    def __init__(self, replica: Replica, settings: Settings) -> None:
        self._replica = replica
        self._settings = settings
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
        replica, settings = self._replica, self._settings
        backoff = 0.5
        failed = False
        next_relay = time.monotonic() + settings.index_log_relay_s
        while not self._stop.is_set():
            if time.monotonic() >= next_relay:
                next_relay = time.monotonic() + settings.index_log_relay_s
                replica.relay()
            try:
                if not replica.wait_ready(0):
                    replica.load()
                elif failed:
                    # After a failure mid-batch the replica may hold part of a batch: rather than
                    # retry the same entry forever, rebuild from the source of truth (searches
                    # keep using the current index until the new one is swapped in).
                    replica.reload()
                failed = False
                replica.poll(block_ms=settings.index_log_poll_ms)
                backoff = 0.5
            except Exception:
                failed = True
                log.exception("index-log follower failed; reloading from SQL in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
