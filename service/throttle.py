"""The backfill's throttle: one token bucket in Redis that every worker of an upgrade draws from.

Why one bucket in Redis: N worker processes, on as many machines, must together hold the rate an
operator set (compare Elasticsearch's ``requests_per_second`` and ``_rethrottle``), so the bucket
cannot live in a process. One Lua script refills it by the time elapsed times the rate, capped at
the burst (one batch), and then either takes ``n`` tokens or answers how long until ``n`` are
there, taking nothing. A worker takes a batch's tokens before it leases the batch
(``workers.batch.lease_and_load``), so no lease is ever held while it waits. Time is Redis's own
clock (``TIME``), so workers whose clocks disagree share one; tests inject a clock instead.

SQL holds the rate (``upgrades.items_per_second``, null: unlimited); Redis only derived state
(docs/design.md, invariant 2). The script reads the rate from a key the API sets when the rate
changes (``publish``), which lives ``keys.THROTTLE_RATE_TTL_S`` seconds: a worker that finds it
gone (expired, or Redis lost) reads SQL and sets it back unless someone set it first
(``publish_if_absent``), so a new rate reaches every worker at its next take, and a rate whose
Redis write failed at most that many seconds later. The API's ``SET`` overwrites and a worker's
``SET NX`` never does, so a worker that read SQL just before a change cannot bring the old rate
back.

Semantics: over any span of T seconds the workers together lease at most ``burst + rate * T``
items. The workers' burst is two batches (``BURST_BATCHES``): tokens a late worker did not take
in time (a slow write, a drain task ending and the next starting) wait for it, so the rate holds
under that jitter, never more than two batches ahead of it. A new bucket holds exactly its first
take (the first batch starts at once, then batches come at the rate), a rate change applies from
the next take (the refill since the last take counts at the new rate: at most one burst off),
and going unlimited drops the bucket, so a rate set later starts anew.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis as redis_lib

from service import keys
from service.metrics import BACKFILL_THROTTLE
from service.settings import Settings

# KEYS: bucket (hash: tokens, ts; win, cur, prev: tokens taken in the measuring window number
# win and in the one before it), rate (string, items/s; 0: unlimited)
# ARGV: n (negative: give back), burst, now ('' = the server's clock), bucket ttl (ms), window (s)
# Returns {'unknown'} when the rate key is absent, else {wait_s, rate} as strings (a Lua number
# in a reply would be truncated to an integer).
_TAKE = """
local rate = redis.call('GET', KEYS[2])
if not rate then return {'unknown'} end
rate = tonumber(rate)
local n, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
if rate == nil or rate <= 0 then
  redis.call('DEL', KEYS[1])
  return {'0', '0'}
end
if n > burst then burst = n end
local now
if ARGV[3] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
else
  now = tonumber(ARGV[3])
end
local tokens, ts = math.max(0, n), now  -- a new bucket holds the first take, no more
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'win', 'cur', 'prev')
if b[1] and b[2] then tokens = tonumber(b[1]); ts = tonumber(b[2]) end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if n <= tokens + 1e-6 then
  tokens = math.max(0, math.min(burst, tokens - n))
  local w, win = math.floor(now / tonumber(ARGV[5])), tonumber(b[3] or '-1')
  local cur, prev = tonumber(b[4] or '0'), tonumber(b[5] or '0')
  if w == win then cur = cur + n
  elseif w == win + 1 then prev = cur; cur = n
  elseif w > win then prev = 0; cur = n end
  redis.call('HSET', KEYS[1], 'win', w, 'cur', cur, 'prev', prev)
else
  wait = (n - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%.17g', now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {string.format('%.17g', wait), string.format('%.17g', rate)}
"""

# The bucket measures what it hands out over windows of this many seconds (``measured``).
MEASURE_WINDOW_S = 5

# The workers' burst, in batches: the most tokens the bucket saves while no worker asks.
BURST_BATCHES = 2

# How often a worker waiting for tokens asks the bucket again, at most: a rate raised (or lifted)
# while it waits is honoured within this.
POLL_S = 0.5


@dataclass(frozen=True)
class Grant:
    """One answer of the bucket: ``wait_s`` 0 when the tokens were taken, else the seconds until
    they will be there (nothing taken); ``rate`` the items/s it applied, None: unlimited."""

    wait_s: float
    rate: float | None


def check_rate(rate: float | None) -> float | None:
    """A rate as stored: None (unlimited) or a finite number above 0; anything else is a ValueError."""
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate) or rate <= 0:
        raise ValueError(f"items_per_second must be a finite number above 0, or null for unlimited; got {rate!r}")
    return float(rate)


class Throttle:
    """The token bucket of one upgrade.

    ``clock`` and ``sleep`` are for tests: with a ``clock`` the bucket refills on it and
    :meth:`acquire`'s deadline is on it; without, the bucket refills on the Redis server's clock
    and the deadline is on ``time.monotonic``."""

    def __init__(
        self,
        redis: redis_lib.Redis,
        settings: Settings,
        upgrade_id: int,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.redis = redis
        self.upgrade_id = int(upgrade_id)
        self.clock = clock
        self.sleep = sleep
        self.bucket_key = keys.throttle_bucket(settings, self.upgrade_id)
        self.rate_key = keys.throttle_rate(settings, self.upgrade_id)
        self._take = redis.register_script(_TAKE)

    def publish(self, rate: float | None) -> None:
        """Make ``rate`` (just committed to SQL) the bucket's rate now, over any copy there."""
        self.redis.set(self.rate_key, _encode(check_rate(rate)), ex=keys.THROTTLE_RATE_TTL_S)

    def publish_if_absent(self, rate: float | None) -> bool:
        """Set the rate read from SQL unless a (newer) one is there already."""
        return bool(self.redis.set(self.rate_key, _encode(check_rate(rate)), ex=keys.THROTTLE_RATE_TTL_S, nx=True))

    def take(self, n: int, burst: int) -> Grant | None:
        """Take ``n`` tokens, or learn how long until there are ``n``; None when Redis holds no
        rate (it must be published from SQL first)."""
        now = "" if self.clock is None else repr(float(self.clock()))
        ttl_ms = keys.THROTTLE_BUCKET_TTL_S * 1000
        out = self._take(
            keys=[self.bucket_key, self.rate_key], args=[int(n), int(burst), now, ttl_ms, MEASURE_WINDOW_S]
        )
        if len(out) < 2:
            return None
        rate = float(out[1])
        return Grant(float(out[0]), rate if rate > 0 else None)

    def give_back(self, n: int, burst: int) -> None:
        """Return ``n`` tokens taken but not used (a batch leased short), up to the burst."""
        if n > 0:
            self.take(-n, burst)

    def acquire(self, n: int, burst: int, load_rate: Callable[[], float | None], until: float) -> Grant | None:
        """Take ``n`` tokens, waiting for them until ``until`` (on the clock, ``time.monotonic``
        by default); None when they did not come in time (nothing taken then).

        ``load_rate`` reads the rate from SQL, called when Redis has none. The rate the bucket
        applied is exported as ``hotrefresh_backfill_throttle_items_per_second`` (0: unlimited)."""
        monotonic = self.clock or time.monotonic
        while True:
            grant = self.take(n, burst)
            if grant is None:
                self.publish_if_absent(load_rate())
                continue
            BACKFILL_THROTTLE.labels(str(self.upgrade_id)).set(grant.rate or 0.0)
            if grant.wait_s <= 0:
                return grant
            left = until - monotonic()
            if left <= 0:
                return None
            self.sleep(min(grant.wait_s, POLL_S, left))

    def measured(self) -> float | None:
        """Items per second the bucket handed out (less what came back) over the last full
        ``MEASURE_WINDOW_S`` window; None when there is no bucket (unlimited, or never used).
        One Redis round trip: cheap enough for every ``GET /upgrade``."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.time()
        pipe.hmget(self.bucket_key, ["win", "cur", "prev"])
        (secs, micros), (win, cur, prev) = pipe.execute()
        if win is None:
            return None
        now = self.clock() if self.clock is not None else secs + micros / 1e6
        w = math.floor(now / MEASURE_WINDOW_S)
        done = float(prev or 0) if w == int(win) else float(cur or 0) if w == int(win) + 1 else 0.0
        return done / MEASURE_WINDOW_S

    def clear(self) -> None:
        self.redis.delete(self.bucket_key, self.rate_key)


def _encode(rate: float | None) -> str:
    return "0" if rate is None else repr(rate)
