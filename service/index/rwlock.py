"""A phase-fair readers-writer lock: many searches at once, one writer at a time, and neither side
can starve the other.

Plain reader-preference locks starve a writer under a steady stream of searches; plain
writer-preference locks starve searches while moves keep arriving. Here a reader that arrives
while a writer holds or waits for the lock waits for the end of that writer's phase, and every
reader waiting at that moment is admitted before the next writer may start. So a writer waits at
most for the readers already in, and a reader waits at most for one write phase (the writer
ahead of it). Not reentrant: a thread must not take it again while holding it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RWLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0  # readers holding the lock
        self._writer = False  # a writer holds the lock
        self._writers_waiting = 0
        self._phase = 0  # completed write phases
        self._readers_waiting = 0  # readers queued behind the current write phase
        self._admitted = 0  # readers let in by the last phase change, not yet running

    def acquire_read(self) -> None:
        with self._cond:
            if not self._writer and not self._writers_waiting:
                self._readers += 1
                return
            self._readers_waiting += 1
            ticket = self._phase
            while self._phase == ticket:
                self._cond.wait()
            self._admitted -= 1
            self._readers += 1

    def release_read(self) -> None:
        with self._cond:
            if self._readers <= 0:
                raise RuntimeError("release_read without a read lock held")
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    def acquire_write(self) -> None:
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers or self._admitted:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True

    def release_write(self) -> None:
        with self._cond:
            if not self._writer:
                raise RuntimeError("release_write without the write lock held")
            self._writer = False
            self._phase += 1
            self._admitted += self._readers_waiting
            self._readers_waiting = 0
            self._cond.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        self.acquire_write()
        try:
            yield
        finally:
            self.release_write()

    def state(self) -> dict[str, int | bool]:
        """A consistent reading of the counters, for tests and debugging."""
        with self._cond:
            return {
                "readers": self._readers,
                "writer": self._writer,
                "writers_waiting": self._writers_waiting,
                "readers_waiting": self._readers_waiting,
                "admitted": self._admitted,
                "phase": self._phase,
            }
