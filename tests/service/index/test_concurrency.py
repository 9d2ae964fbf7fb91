"""The readers-writer lock is fair both ways, and searches stay correct while moves are applied
from another thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np

from service.index import MixedIndex, RWLock
from service.index.flat import FlatBackend
from tests.utils.index import unit_vectors

WAIT_S = 10.0  # a deadline for something that must happen; never a speed requirement


def _until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.001)


def _thread(target: Callable[[], None]) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def test_readers_share_the_lock() -> None:
    lock = RWLock()
    inside = threading.Barrier(3, timeout=WAIT_S)

    def reader() -> None:
        with lock.read():
            inside.wait()  # only passes when all three hold the read lock at once

    threads = [_thread(reader) for _ in range(3)]
    for t in threads:
        t.join(WAIT_S)
        assert not t.is_alive()


def test_waiting_writer_goes_before_later_readers() -> None:
    lock, log = RWLock(), []
    release_first = threading.Event()

    def first_reader() -> None:
        with lock.read():
            release_first.wait(WAIT_S)

    def writer() -> None:
        with lock.write():
            log.append("writer")

    def late_reader() -> None:
        with lock.read():
            log.append("late reader")

    r1 = _thread(first_reader)
    _until(lambda: lock.state()["readers"] == 1)
    w = _thread(writer)
    _until(lambda: lock.state()["writers_waiting"] == 1)
    r2 = _thread(late_reader)
    _until(lambda: lock.state()["readers_waiting"] == 1)  # queued behind the writer, not let in
    assert log == []
    release_first.set()
    for t in (r1, w, r2):
        t.join(WAIT_S)
    assert log == ["writer", "late reader"]


def test_readers_queued_behind_a_writer_go_before_the_next_writer() -> None:
    lock, log = RWLock(), []
    release_w1 = threading.Event()

    def w1() -> None:
        with lock.write():
            release_w1.wait(WAIT_S)
            log.append("w1")

    def reader(name: str) -> Callable[[], None]:
        def run() -> None:
            with lock.read():
                log.append(name)

        return run

    def w2() -> None:
        with lock.write():
            log.append("w2")

    t1 = _thread(w1)
    _until(lambda: lock.state()["writer"])
    readers = [_thread(reader(f"r{i}")) for i in range(3)]
    _until(lambda: lock.state()["readers_waiting"] == 3)
    t2 = _thread(w2)
    _until(lambda: lock.state()["writers_waiting"] == 1)
    release_w1.set()
    for t in (t1, *readers, t2):
        t.join(WAIT_S)
    assert log[0] == "w1" and log[-1] == "w2" and sorted(log[1:4]) == ["r0", "r1", "r2"]


def test_searches_during_moves_always_find_each_item_exactly_once() -> None:
    rng = np.random.default_rng(7)
    n, d = 2000, 32
    ids = np.arange(n, dtype=np.int64)
    old = unit_vectors(rng, n, d)
    new = old + 0.05 * unit_vectors(rng, n, d)  # a compatible model: near its old vector
    new /= np.linalg.norm(new, axis=1, keepdims=True)
    idx = MixedIndex(FlatBackend)
    idx.add("old", ids, old)
    errors: list[str] = []
    done = threading.Event()
    searches = [0]

    def searcher(seed: int) -> None:
        r = np.random.default_rng(seed)
        while not done.is_set():
            probe = r.choice(ids, 8, replace=False)
            # an item's own old or new vector finds it at rank 1, wherever it lives right now
            qs = np.where(r.random((8, 1)) < 0.5, old[probe], new[probe])
            for i, row in zip(probe, idx.search(qs, k=20), strict=True):
                got = [h.id for h in row]
                if len(set(got)) != len(got):
                    errors.append(f"duplicate ids {got}")
                if got[0] != i:
                    errors.append(f"item {i} not first: {got[:3]}")
            searches[0] += 1

    def mover() -> None:
        try:
            for batch in np.array_split(rng.permutation(ids), 40):
                idx.move(batch, "new", new[batch])
            idx.rollback("old")
            for batch in np.array_split(rng.permutation(ids), 20):
                idx.move(batch, "new", new[batch])
        finally:
            done.set()

    threads = [_thread(lambda s=s: searcher(s)) for s in range(3)]
    m = _thread(mover)
    m.join(120)
    for t in threads:
        t.join(WAIT_S)
    assert not m.is_alive()
    assert errors == []
    assert searches[0] > 0
    assert idx.counts() == {"old": 0, "new": n}
    assert idx.parked_counts() == {"old": n}
