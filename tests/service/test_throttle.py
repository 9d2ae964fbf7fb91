"""The backfill's token bucket (``service.throttle``) on the real Redis, with an injected clock:
the rate arithmetic, the burst cap, tokens given back, what it measures, the bucket shared by several clients (the
workers' processes), a rate changed while a worker waits, and the rate coming back from SQL
when Redis lost it."""

from __future__ import annotations

import math

import pytest
import redis as redis_lib

from service.settings import Settings
from service.throttle import MEASURE_WINDOW_S, POLL_S, Throttle, check_rate
from tests.utils.env import REDIS_TEST_URL

pytestmark = pytest.mark.integration

BATCH = 8


class Clock:
    """Seconds that move only when a test (or a throttle's sleep) moves them."""

    def __init__(self, t: float = 1_765_000_000.0) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


@pytest.fixture
def settings(redis_prefix: str) -> Settings:
    return Settings(redis_prefix=redis_prefix)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def throttle(redis_client: redis_lib.Redis, settings: Settings, clock: Clock) -> Throttle:
    return Throttle(redis_client, settings, 7, clock=clock, sleep=clock.sleep)


def no_sql() -> float | None:
    raise AssertionError("the rate was in Redis: SQL must not be read")


def test_a_full_bucket_gives_one_burst_then_answers_the_wait_at_the_rate(throttle: Throttle, clock: Clock) -> None:
    throttle.publish(10.0)
    first = throttle.take(BATCH, BATCH)
    assert first is not None and first.wait_s == 0 and first.rate == 10.0
    assert throttle.take(BATCH, BATCH).wait_s == pytest.approx(0.8)  # nothing left, 8 tokens at 10/s
    clock.t += 0.3
    assert throttle.take(BATCH, BATCH).wait_s == pytest.approx(0.5)  # 3 came, 5 to go
    clock.t += 0.5
    assert throttle.take(BATCH, BATCH).wait_s == 0  # taken
    assert throttle.take(1, BATCH).wait_s == pytest.approx(0.1)


def test_idle_time_saves_no_more_than_the_burst(throttle: Throttle, clock: Clock) -> None:
    throttle.publish(10.0)
    assert throttle.take(BATCH, BATCH).wait_s == 0
    clock.t += 600  # idle for 10 minutes: 6000 tokens' worth of time
    assert throttle.take(BATCH, BATCH).wait_s == 0
    assert throttle.take(BATCH, BATCH).wait_s == pytest.approx(0.8)


def test_a_burst_of_two_batches_saves_a_batch_for_a_late_worker_but_a_new_bucket_holds_one(
    throttle: Throttle, clock: Clock
) -> None:
    throttle.publish(10.0)
    assert throttle.take(BATCH, 2 * BATCH).wait_s == 0
    assert throttle.take(BATCH, 2 * BATCH).wait_s == pytest.approx(0.8)  # no second batch at the start
    clock.t += 1.2  # a worker 0.4 s late: 12 tokens
    assert throttle.take(BATCH, 2 * BATCH).wait_s == 0
    assert throttle.take(BATCH, 2 * BATCH).wait_s == pytest.approx(0.4)  # the next is due on time
    clock.t += 600
    assert throttle.take(BATCH, 2 * BATCH).wait_s == 0
    assert throttle.take(BATCH, 2 * BATCH).wait_s == 0
    assert throttle.take(BATCH, 2 * BATCH).wait_s == pytest.approx(0.8)


def test_tokens_given_back_are_taken_again_up_to_the_burst(throttle: Throttle, clock: Clock) -> None:
    throttle.publish(10.0)
    assert throttle.take(BATCH, BATCH).wait_s == 0
    throttle.give_back(5, BATCH)  # the lease found only 3 ids
    assert throttle.take(BATCH, BATCH).wait_s == pytest.approx(0.3)
    throttle.give_back(100, BATCH)  # never more than the burst
    assert throttle.take(BATCH, BATCH).wait_s == 0
    assert throttle.take(BATCH, BATCH).wait_s == pytest.approx(0.8)


def test_unlimited_never_waits_and_a_rate_set_later_starts_with_one_burst(
    throttle: Throttle, redis_client: redis_lib.Redis
) -> None:
    throttle.publish(None)
    for _ in range(5):
        grant = throttle.take(1000, BATCH)
        assert grant is not None and grant.wait_s == 0 and grant.rate is None
    assert not redis_client.exists(throttle.bucket_key)
    throttle.publish(10.0)
    assert throttle.take(BATCH, BATCH).wait_s == 0
    assert throttle.take(BATCH, BATCH).wait_s == pytest.approx(0.8)


def test_the_bucket_measures_what_it_handed_out_over_the_last_full_window(throttle: Throttle, clock: Clock) -> None:
    assert clock.t % MEASURE_WINDOW_S == 0  # windows start on multiples of their length
    throttle.publish(10.0)
    assert throttle.measured() is None  # no bucket yet
    for k in range(7):  # batches at 0, 0.8, ..., 4.8 s: 56 items in the first window
        clock.t = 1_765_000_000.0 + 0.8 * k
        assert throttle.take(BATCH, BATCH).wait_s == 0
    assert throttle.measured() == 0.0  # the window before the first is empty
    clock.t = 1_765_000_005.6
    assert throttle.measured() == pytest.approx(56 / MEASURE_WINDOW_S)
    assert throttle.take(BATCH, BATCH).wait_s == 0
    throttle.give_back(3, BATCH)  # the lease found 5 ids
    clock.t = 1_765_000_010.1
    assert throttle.measured() == pytest.approx(5 / MEASURE_WINDOW_S)
    clock.t = 1_765_000_020.0
    assert throttle.measured() == 0.0  # nothing handed out lately (paused, say)
    throttle.publish(None)
    throttle.take(BATCH, BATCH)
    assert throttle.measured() is None  # unlimited: no bucket


def test_a_new_rate_applies_from_the_next_take(throttle: Throttle, clock: Clock) -> None:
    throttle.publish(10.0)
    assert throttle.take(BATCH, BATCH).wait_s == 0
    assert throttle.take(BATCH, BATCH).wait_s == pytest.approx(0.8)
    throttle.publish(80.0)
    grant = throttle.take(BATCH, BATCH)
    assert grant.wait_s == pytest.approx(0.1) and grant.rate == 80.0


def test_clients_of_one_bucket_together_hold_the_rate(settings: Settings, clock: Clock) -> None:
    """Three workers (three Redis connections) draw batches as fast as the bucket lets them for
    60 simulated seconds: together they get the rate, not three times it."""
    rate, seconds = 10.0, 60.0
    clients = [redis_lib.Redis.from_url(REDIS_TEST_URL) for _ in range(3)]
    try:
        workers = [Throttle(c, settings, 7, clock=clock) for c in clients]
        workers[0].publish(rate)
        start = clock.t
        next_try = [start] * len(workers)
        granted = [0] * len(workers)
        while True:
            # the earliest to look; on a tie, the one served least (real workers' jitter)
            k = min(range(len(workers)), key=lambda i: (next_try[i], granted[i]))
            if next_try[k] > start + seconds:
                break
            clock.t = next_try[k]
            grant = workers[k].take(BATCH, BATCH)
            assert grant is not None
            if grant.wait_s == 0:
                granted[k] += BATCH
            else:
                next_try[k] = clock.t + grant.wait_s
    finally:
        for c in clients:
            c.close()
    # at most one burst plus the rate over the span, and never short of it by more than a batch
    assert rate * seconds - BATCH <= sum(granted) <= BATCH + rate * seconds, granted
    assert all(g > 0 for g in granted), granted


def test_acquire_waits_in_steps_and_takes_nothing_when_its_deadline_passes(throttle: Throttle, clock: Clock) -> None:
    throttle.publish(10.0)
    assert throttle.acquire(BATCH, BATCH, no_sql, until=clock.t + 5).wait_s == 0
    start = clock.t
    grant = throttle.acquire(BATCH, BATCH, no_sql, until=clock.t + 5)
    assert grant is not None and grant.wait_s == 0 and grant.rate == 10.0
    assert clock.t - start == pytest.approx(0.8) and all(s <= POLL_S for s in clock.sleeps), clock.sleeps

    throttle.publish(1.0)
    assert throttle.acquire(BATCH, BATCH, no_sql, until=clock.t + 2) is None  # 8 s away
    clock.t += 6  # 8 s after the last grant: 8 tokens, so the failed acquire took none
    assert throttle.take(BATCH, BATCH).wait_s == 0


def test_a_rate_raised_while_a_worker_waits_is_honoured_at_its_next_look(
    redis_client: redis_lib.Redis, settings: Settings, clock: Clock
) -> None:
    operator = Throttle(redis_client, settings, 7, clock=clock)

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        operator.publish(1000.0)  # POST /upgrade/7/throttle during the worker's first wait

    worker = Throttle(redis_client, settings, 7, clock=clock, sleep=sleep)
    operator.publish(1.0)
    assert worker.acquire(BATCH, BATCH, no_sql, until=clock.t + 60).wait_s == 0
    grant = worker.acquire(BATCH, BATCH, no_sql, until=clock.t + 60)  # 8 s away at 1/s
    assert grant is not None and grant.rate == 1000.0
    assert clock.sleeps == [POLL_S]


def test_the_rate_comes_back_from_sql_when_redis_lost_it_and_never_overwrites_a_newer_one(
    throttle: Throttle, redis_client: redis_lib.Redis, clock: Clock
) -> None:
    sql = {"rate": 20.0, "reads": 0}

    def load() -> float | None:
        sql["reads"] += 1
        return sql["rate"]

    assert throttle.take(BATCH, BATCH) is None  # no rate in Redis: the caller must read SQL
    grant = throttle.acquire(BATCH, BATCH, load, until=clock.t + 5)
    assert grant.rate == 20.0 and sql["reads"] == 1
    assert throttle.acquire(BATCH, BATCH, load, until=clock.t + 5).rate == 20.0
    assert sql["reads"] == 1  # Redis holds it now

    redis_client.delete(throttle.bucket_key, throttle.rate_key)  # Redis restarted empty
    sql["rate"] = None
    grant = throttle.acquire(BATCH, BATCH, load, until=clock.t + 5)
    assert grant.rate is None and sql["reads"] == 2

    # A worker that read SQL before an operator's change cannot put the old rate back.
    redis_client.delete(throttle.rate_key)
    throttle.publish(80.0)
    assert not throttle.publish_if_absent(20.0)
    assert throttle.take(BATCH, BATCH).rate == 80.0
    assert 0 < redis_client.ttl(throttle.rate_key) <= 5


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.nan, math.inf, True, "5"])
def test_a_rate_must_be_finite_and_above_zero(bad: object) -> None:
    with pytest.raises(ValueError, match="items_per_second"):
        check_rate(bad)  # type: ignore[arg-type]
    assert check_rate(None) is None and check_rate(5) == 5.0
