"""The Redis priority queue with leases, on the real Redis."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import redis as redis_lib

from service.queue import BackfillQueue
from service.settings import Settings
from tests.utils.env import REDIS_TEST_URL

pytestmark = pytest.mark.integration


@pytest.fixture
def queue(redis_prefix: str, redis_client: redis_lib.Redis) -> BackfillQueue:
    return BackfillQueue(redis_client, Settings(redis_prefix=redis_prefix), upgrade_id=7)


def test_lease_returns_highest_priority_first(queue: BackfillQueue) -> None:
    queue.push([1, 2, 3, 4], [0.1, 0.9, 0.5, 0.7])
    assert queue.lease(2, 60) == [2, 4]
    assert queue.lease(5, 60) == [3, 1]
    assert queue.lease(5, 60) == []
    assert queue.depth() == 0 and queue.leased() == 4


def test_ack_removes_and_expired_leases_come_back_with_their_priority(queue: BackfillQueue) -> None:
    queue.push([1, 2, 3], [0.3, 0.2, 0.1])
    now = 1000.0
    assert queue.lease(2, 10, now=now) == [1, 2]
    assert queue.ack([1]) == 1
    # before the deadline nothing comes back
    assert queue.lease(5, 10, now=now + 5) == [3]
    # after it, the unacked id 2 is leased again, ahead of nothing else
    queue.push([9], [0.15])
    assert queue.lease(1, 10, now=now + 11) == [2]
    assert queue.lease(5, 10, now=now + 11) == [9]
    # id 3's lease (deadline now+15) expired; reclaim puts it back
    queue.reclaim(now=now + 16)
    assert queue.depth() == 1 and queue.lease(5, 10, now=now + 16) == [3]


def test_ack_of_a_lost_lease_does_not_steal_it(queue: BackfillQueue) -> None:
    queue.push([1], [1.0])
    assert queue.lease(1, 10, now=0) == [1]
    queue.reclaim(now=20)  # expired: back in the queue
    assert queue.ack([1]) == 0  # the slow worker's late ack does not drop it
    assert queue.lease(1, 10, now=21) == [1]


def test_release_and_remove(queue: BackfillQueue) -> None:
    queue.push([1, 2, 3], [3.0, 2.0, 1.0])
    assert queue.lease(2, 60) == [1, 2]
    assert queue.release([2]) == 1
    assert queue.depth() == 2
    queue.remove([2, 1])
    assert queue.depth() == 1 and queue.leased() == 0
    assert queue.lease(5, 60) == [3]


def test_push_rejects_mismatched_lengths(queue: BackfillQueue) -> None:
    with pytest.raises(ValueError):
        queue.push([1, 2], [1.0])
    assert queue.depth() == 0


def test_concurrent_leasers_never_get_the_same_id(redis_prefix: str) -> None:
    settings = Settings(redis_prefix=redis_prefix)
    n = 3000
    BackfillQueue(redis_lib.Redis.from_url(REDIS_TEST_URL), settings, 1).push(
        list(range(n)), [float(i % 97) for i in range(n)]
    )
    got: list[list[int]] = [[] for _ in range(8)]

    def leaser(slot: int) -> None:
        q = BackfillQueue(redis_lib.Redis.from_url(REDIS_TEST_URL), settings, 1)
        while ids := q.lease(7, 60):
            got[slot].extend(ids)

    threads = [threading.Thread(target=leaser, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for ids in got for i in ids]
    assert len(everything) == n
    assert sorted(everything) == list(range(n))


def test_rebuild_if_lost_only_when_empty(queue: BackfillQueue, redis_client: redis_lib.Redis) -> None:
    queue.push([1, 2], [1.0, 2.0])
    assert queue.lease(1, 60) == [2]
    sql = Tasks([(1, 1.0), (2, 2.0)])
    assert queue.rebuild_if_lost(sql.load) is None  # a lease is out: no rebuild
    redis_client.delete(*queue.keys)  # Redis "lost" everything
    assert queue.is_empty()
    assert queue.rebuild_if_lost(Tasks([(1, 1.0), (2, 2.0), (5, 9.0)]).load) == 3
    assert queue.lease(10, 60) == [5, 2, 1]


class Tasks:
    """SQL's pending tasks, for the window's unit tests: ``load`` answers as
    ``upgrades.pending_after`` does (tests/service/repositories/test_pending_after.py checks
    that one on SQLite and PostgreSQL), and counts its calls."""

    def __init__(self, pairs: list[tuple[int, float]]) -> None:
        self.pending = dict(pairs)
        self.calls = 0

    def load(self, after: tuple[float, int] | None, limit: int) -> list[tuple[int, float]]:
        self.calls += 1
        order = sorted(self.pending.items(), key=lambda ip: (-ip[1], ip[0]))
        if after is not None:
            order = [(i, p) for i, p in order if (-p, i) > (-after[0], after[1])]
        return order[:limit]

    def offline_order(self) -> list[int]:
        from models.uncertainty import backfill_order

        ids = sorted(self.pending)
        return [ids[k] for k in backfill_order(np.asarray([self.pending[i] for i in ids]))]


def _windowed(redis_prefix: str, redis_client: redis_lib.Redis, window: int) -> BackfillQueue:
    return BackfillQueue(redis_client, Settings(redis_prefix=redis_prefix, queue_window=window), upgrade_id=8)


def _lease_all(q: BackfillQueue, sql: Tasks, n: int) -> list[int]:
    """What workers do: top up, lease, ack (and the task leaves SQL's pending tasks)."""
    got: list[int] = []
    while True:
        q.top_up(sql.load)
        ids = q.lease(n, 60)
        if not ids:
            return got
        got += ids
        q.ack(ids)
        for i in ids:
            sql.pending.pop(i)


def test_the_window_holds_at_most_its_size_and_leases_the_exact_offline_order(
    redis_prefix: str, redis_client: redis_lib.Redis
) -> None:
    rng = np.random.default_rng(3)
    # 1,000 tasks with many ties (priorities on a coarse grid), so ties straddle the refills
    pairs = [
        (int(i), float(p)) for i, p in zip(rng.permutation(5000)[:1000] + 1, rng.integers(0, 40, 1000) / 8, strict=True)
    ]
    sql = Tasks(pairs)
    offline = sql.offline_order()
    q = _windowed(redis_prefix, redis_client, window=64)
    assert q.start([(i, sql.pending[i]) for i in offline]) == 64
    assert q.depth() == 64 and redis_client.hlen(q.prio_key) == 64
    peak = 0
    got: list[int] = []
    while True:
        q.top_up(sql.load)
        peak = max(peak, q.depth())
        ids = q.lease(10, 60)
        if not ids:
            break
        got += ids
        q.ack(ids)
        for i in ids:
            sql.pending.pop(i)
    assert got == offline  # every id once, in the offline order, ties by ascending id
    assert peak <= 64  # never over the window
    # refilled from SQL about half a window at a time (not one read per lease), the last read
    # finding SQL empty
    assert (1000 - 64) // 64 <= sql.calls <= (1000 - 64) // 32 + 2
    assert q.cursor()[1] is True and q.is_empty()


def test_expired_leases_and_releases_come_back_into_the_window(
    redis_prefix: str, redis_client: redis_lib.Redis
) -> None:
    sql = Tasks([(i, float(100 - i)) for i in range(1, 101)])
    q = _windowed(redis_prefix, redis_client, window=20)
    q.start(sql.load(None, 10**9))
    first = q.lease(15, 10, now=0)  # 5 left: below half
    assert first == list(range(1, 16))
    assert q.top_up(sql.load) == 15  # topped up to 20 queued: ids 21..35
    assert q.release(first[:5]) == 5  # a transient error gives five back
    assert q.lease(40, 10, now=20) == [*range(1, 36)]  # the other ten expired: all in order
    assert q.cursor()[0] == (65.0, 35)


def test_a_stale_refill_does_not_overwrite_a_newer_one(redis_prefix: str, redis_client: redis_lib.Redis) -> None:
    sql = Tasks([(i, float(100 - i)) for i in range(1, 101)])
    q = _windowed(redis_prefix, redis_client, window=20)
    q.start(sql.load(None, 10**9))
    q.lease(15, 60)
    stale = redis_client.get(q.cursor_key)
    assert q.top_up(sql.load) == 15
    # a refiller whose lock expired while it read SQL comes back with what it read then
    assert q._bring(stale, sql.load((81.0, 19), 15), exhausted=False) == -1
    assert q.depth() == 20 and q.cursor()[0] == (65.0, 35)


def test_concurrent_workers_with_refills_never_get_the_same_id(redis_prefix: str) -> None:
    settings = Settings(redis_prefix=redis_prefix, queue_window=50)
    n = 2000
    sql = Tasks([(i, float(i % 13)) for i in range(n)])
    lock = threading.Lock()

    def load(after: tuple[float, int] | None, limit: int) -> list[tuple[int, float]]:
        with lock:  # the SQL side is read by one refiller at a time anyway (the window's lock)
            return sql.load(after, limit)

    BackfillQueue(redis_lib.Redis.from_url(REDIS_TEST_URL), settings, 9).start(sql.load(None, n))
    got: list[list[int]] = [[] for _ in range(6)]

    def worker(slot: int) -> None:
        q = BackfillQueue(redis_lib.Redis.from_url(REDIS_TEST_URL), settings, 9)
        idle = 0
        while idle < 50:  # another worker may hold the refill lock for a moment
            q.top_up(load)
            ids = q.lease(7, 60)
            idle = 0 if ids else idle + 1
            got[slot].extend(ids)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for ids in got for i in ids]
    assert sorted(everything) == list(range(n))


def test_a_lost_window_is_rebuilt_from_what_sql_still_has(redis_prefix: str, redis_client: redis_lib.Redis) -> None:
    sql = Tasks([(i, float(i)) for i in range(1, 301)])
    q = _windowed(redis_prefix, redis_client, window=40)
    q.start(sql.load(None, 10**9))
    done = _lease_some(q, sql, 100)
    assert done == list(range(300, 200, -1))
    redis_client.delete(*q.keys, q.cursor_key)  # Redis restarted empty
    assert q.top_up(sql.load) == 0  # no cursor: a refill cannot tell where it is
    assert q.rebuild_if_lost(sql.load) == 40
    assert _lease_all(q, sql, 9) == list(range(200, 0, -1))


def _lease_some(q: BackfillQueue, sql: Tasks, count: int) -> list[int]:
    got: list[int] = []
    while len(got) < count:
        q.top_up(sql.load)
        ids = q.lease(min(10, count - len(got)), 60)
        got += ids
        q.ack(ids)
        for i in ids:
            sql.pending.pop(i)
    return got


def test_ties_break_by_ascending_id_like_the_offline_order(queue: BackfillQueue) -> None:
    from models.uncertainty import backfill_order

    ids = [5, 12, 3, 100, 7, 40]
    prio = [0.5, 0.9, 0.5, 0.5, 0.9, 0.1]
    queue.push(ids, prio)
    got = queue.lease(10, 60)
    by_id = sorted(range(len(ids)), key=lambda k: ids[k])  # offline: items indexed in id order
    offline = [ids[by_id[k]] for k in backfill_order(np.asarray([prio[j] for j in by_id]))]
    assert got == offline == [7, 12, 3, 5, 100, 40]


def test_barrier_stops_leasing_but_expired_leases_still_return(queue: BackfillQueue) -> None:
    queue.push([1, 2], [2.0, 1.0])
    assert queue.lease(1, 10, now=0) == [1]
    queue.raise_barrier(30)
    assert queue.lease(5, 10, now=20) == [] and queue.blocked
    assert queue.depth() == 2 and queue.leased() == 0  # id 1's lease expired and came back
    queue.lower_barrier()
    assert queue.lease(5, 10, now=21) == [1, 2] and not queue.blocked


def test_a_batch_larger_than_the_window_is_leased_whole(redis_prefix: str, redis_client: redis_lib.Redis) -> None:
    sql = Tasks([(i, float(-i)) for i in range(1, 101)])
    q = _windowed(redis_prefix, redis_client, window=16)
    assert q.start(sql.load(None, 10**9)) == 16
    assert q.top_up(sql.load, need=40) == 24
    assert q.lease(40, 60) == list(range(1, 41))


def test_a_window_larger_than_a_chunk_comes_over_in_order(redis_prefix: str, redis_client: redis_lib.Redis) -> None:
    from service import queue as queue_module

    n = 3 * queue_module._CHUNK + 17  # several chunks, each one script call behind the one before
    sql = Tasks([(i, float(i % 7)) for i in range(1, n + 1)])
    q = _windowed(redis_prefix, redis_client, window=n)
    assert q.start(sql.load(None, 10**9)) == n
    assert q.cursor()[1] is True and q.depth() == n
    assert _lease_all(q, sql, 1000) == Tasks([(i, float(i % 7)) for i in range(1, n + 1)]).offline_order()
