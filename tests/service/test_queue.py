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
    assert queue.rebuild_if_lost(lambda: [(1, 1.0), (2, 2.0)]) is None  # a lease is out: no rebuild
    redis_client.delete(*queue.keys)  # Redis "lost" everything
    assert queue.is_empty()
    assert queue.rebuild_if_lost(lambda: [(1, 1.0), (2, 2.0), (5, 9.0)]) == 3
    assert queue.lease(10, 60) == [5, 2, 1]


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
