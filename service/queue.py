"""The backfill queue of one upgrade: a bounded window of a Redis sorted set by priority, plus
leases with deadlines.

Redis holds only derived state (docs/design.md, invariant 2): every priority also lives in SQL
(``backfill_tasks``). Redis holds a **window** of at most ``settings.queue_window`` queued ids,
the top of the queue: when it falls below half, a worker refills it from SQL with the next
pending tasks after the window's last one (:meth:`BackfillQueue.top_up`), so Redis memory per
upgrade does not grow with the gallery (it held a member and a field per item before: 231.6
MiB at 1M items). Every id in SQL after the cursor ranks below every id in the window, and
none of them was ever handed out, so leasing the window's top is leasing the queue's top, and
a refill can never hand out an id twice. When Redis comes back empty, the window is rebuilt
from the start of SQL's pending tasks.

Keys (``{prefix}`` is ``settings.redis_prefix``):

- ``{prefix}:upgrade:{id}:queue``  ZSET item id -> priority (higher = backfill first)
- ``{prefix}:upgrade:{id}:leases`` ZSET item id -> lease deadline (unix seconds)
- ``{prefix}:upgrade:{id}:prio``   HASH item id -> priority, so an expired lease goes back to
  the queue with the priority it had rather than a made-up one
- ``{prefix}:upgrade:{id}:cursor`` ``"<priority> <item id> <1 if SQL has no more>"`` of the
  last id brought over from SQL; absent: nothing was (a new or a lost queue)
- ``{prefix}:upgrade:{id}:barrier`` while set, nobody leases (a live-NFR checkpoint waits for
  in-flight batches to land, so it measures exactly the first n items of the order)

Leasing is one Lua script, so two workers can never receive the same id: the script first
returns expired leases to the queue, then pops the top ``n`` and records their deadline.

Members are not the bare id but ``10**19 - 1 - id``, zero-padded to 19 digits: Redis orders
equal scores by member bytes, and this encoding makes "highest priority first" break ties by
ascending item id — the same order as ``models.uncertainty.backfill_order`` (a stable sort) and
as SQL's ``ORDER BY priority DESC, item_id`` — so the live backfill, the window's refills and
the offline evaluator agree on ties too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import cast

import redis as redis_lib
from redis.typing import EncodableT, FieldT

from service import keys
from service.settings import Settings

_LEASE = """
local queue, leases, prio, barrier = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local now, n, deadline = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local expired = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
for _, id in ipairs(expired) do
  redis.call('ZREM', leases, id)
  local p = redis.call('HGET', prio, id)
  if p then redis.call('ZADD', queue, p, id) end
end
if n <= 0 then return {} end
if redis.call('EXISTS', barrier) == 1 then return false end
local ids = redis.call('ZRANGE', queue, 0, n - 1, 'REV')
for _, id in ipairs(ids) do
  redis.call('ZREM', queue, id)
  redis.call('ZADD', leases, deadline, id)
end
return ids
"""

# Remove ids from the lease set and forget their priority, but only those still leased: an
# id whose lease expired and was re-leased by another worker is that worker's now.
_ACK = """
local n = 0
for i, id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('HDEL', KEYS[2], id)
    n = n + 1
  end
end
return n
"""

_RELEASE = """
local n = 0
for i, id in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[2], id) == 1 then
    local p = redis.call('HGET', KEYS[3], id)
    if p then redis.call('ZADD', KEYS[1], p, id); n = n + 1 end
  end
end
return n
"""

# Bring ids over from SQL: only if the cursor is still what the refiller read (a refill whose
# lock expired during a slow SQL read must not write over a newer one), then move it.
_FILL = """
local cur = redis.call('GET', KEYS[3])
if (cur or '') ~= ARGV[1] then return -1 end
for i = 3, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[1], ARGV[i + 1], ARGV[i])
end
redis.call('SET', KEYS[3], ARGV[2])
return (#ARGV - 2) / 2
"""

_CHUNK = 5000
_ID_SPACE = 10**19 - 1  # > any BIGINT id


def _member(item_id: int) -> str:
    return f"{_ID_SPACE - int(item_id):019d}"


def _item(member: bytes | str) -> int:
    return _ID_SPACE - int(member)


Pairs = Sequence[tuple[int, float]]
Cursor = tuple[float, int]
# The next pending ``(item id, priority)`` pairs in queue order after a cursor ``(priority, item
# id)`` (from the start with None), at most ``limit`` of them: SQL's side of the window.
Loader = Callable[[Cursor | None, int], Pairs]


def _cursor_value(last: tuple[int, float], exhausted: bool) -> str:
    item_id, priority = last
    return f"{float(priority)!r} {int(item_id)} {int(exhausted)}"


def _parse_cursor(raw: bytes | str | None) -> tuple[Cursor | None, bool]:
    if raw is None:
        return None, False
    priority, item_id, exhausted = (raw.decode() if isinstance(raw, bytes) else raw).split()
    return (float(priority), int(item_id)), exhausted == "1"


class BackfillQueue:
    """The priority queue and lease set of one upgrade."""

    def __init__(self, redis: redis_lib.Redis, settings: Settings, upgrade_id: int) -> None:
        self.redis = redis
        self.upgrade_id = int(upgrade_id)
        self.queue_key = keys.queue(settings, self.upgrade_id)
        self.leases_key = keys.leases(settings, self.upgrade_id)
        self.prio_key = keys.priorities(settings, self.upgrade_id)
        self.rebuild_lock_key = keys.rebuild_lock(settings, self.upgrade_id)
        self.barrier_key = keys.barrier(settings, self.upgrade_id)
        self.cursor_key = keys.cursor(settings, self.upgrade_id)
        self.window = int(settings.queue_window)
        self.blocked = False  # the last lease() found the barrier up
        self._lease = redis.register_script(_LEASE)
        self._ack = redis.register_script(_ACK)
        self._release = redis.register_script(_RELEASE)
        self._fill = redis.register_script(_FILL)

    @property
    def keys(self) -> list[str]:
        return [self.queue_key, self.leases_key, self.prio_key]

    def push(self, ids: Sequence[int], priorities: Sequence[float]) -> None:
        if len(ids) != len(priorities):
            raise ValueError(f"push: {len(ids)} ids but {len(priorities)} priorities")
        for start in range(0, len(ids), _CHUNK):
            mapping = {
                _member(i): float(p)
                for i, p in zip(ids[start : start + _CHUNK], priorities[start : start + _CHUNK], strict=True)
            }
            pipe = self.redis.pipeline(transaction=True)
            # redis-py types hset's mapping with invariant FieldT keys, which refuses str keys
            pipe.hset(self.prio_key, mapping=cast(Mapping[FieldT, EncodableT], mapping))
            pipe.zadd(self.queue_key, mapping)
            pipe.execute()

    def lease(self, n: int, lease_seconds: float, now: float | None = None) -> list[int]:
        """Atomically take the ``n`` highest-priority ids; they come back if not acked in time.
        Returns [] with ``self.blocked`` set while a checkpoint barrier is up."""
        now = time.time() if now is None else now
        out = self._lease(keys=[*self.keys, self.barrier_key], args=[repr(now), int(n), repr(now + lease_seconds)])
        self.blocked = out is None
        return [_item(x) for x in out or []]

    def reclaim(self, now: float | None = None) -> None:
        """Return expired leases to the queue without leasing anything."""
        self.lease(0, 0.0, now=now)

    def ack(self, ids: Iterable[int]) -> int:
        args = [_member(i) for i in ids]
        return int(self._ack(keys=[self.leases_key, self.prio_key], args=args)) if args else 0

    def release(self, ids: Iterable[int]) -> int:
        """Give leased ids back to the queue at once (e.g. a transient error), with their priority."""
        args = [_member(i) for i in ids]
        return int(self._release(keys=self.keys, args=args)) if args else 0

    def remove(self, ids: Iterable[int]) -> None:
        """Forget ids entirely (the item was deleted from the gallery)."""
        args = [_member(i) for i in ids]
        if not args:
            return
        pipe = self.redis.pipeline(transaction=True)
        pipe.zrem(self.queue_key, *args)
        pipe.zrem(self.leases_key, *args)
        pipe.hdel(self.prio_key, *args)
        pipe.execute()

    def depth(self) -> int:
        return int(self.redis.zcard(self.queue_key))

    def leased(self) -> int:
        return int(self.redis.zcard(self.leases_key))

    def leased_ids(self) -> list[int]:
        # without withscores ZRANGE replies bare members; redis-py's return type also covers scored pairs
        members = cast(list[bytes | str], self.redis.zrange(self.leases_key, 0, -1))
        return [_item(m) for m in members]

    def is_empty(self) -> bool:
        """Nothing queued and nothing leased."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zcard(self.queue_key)
        pipe.zcard(self.leases_key)
        q, leased = pipe.execute()
        return int(q) == 0 and int(leased) == 0

    def clear(self) -> None:
        self.redis.delete(*self.keys, self.barrier_key, self.cursor_key)

    def raise_barrier(self, ttl_seconds: float) -> None:
        """Stop all leasing until :meth:`lower_barrier` (or the TTL, should the holder die)."""
        self.redis.set(self.barrier_key, "1", px=max(1, int(ttl_seconds * 1000)))

    def lower_barrier(self) -> None:
        self.redis.delete(self.barrier_key)

    # --- the window --------------------------------------------------------------------------

    def start(self, pairs: Pairs) -> int:
        """A new queue from the upgrade's tasks in queue order (scoring has them all at hand):
        Redis takes the first window of them. Returns how many ids it took."""
        self.clear()
        head = list(pairs[: self.window])
        return self._bring(None, head, exhausted=len(pairs) <= self.window)

    def top_up(self, load: Loader, need: int = 0, lock_seconds: float = 30.0) -> int:
        """Refill the window from SQL when it fell below half (or below ``need``, the batch
        about to be leased, should a batch be larger than the window) and SQL has more; at
        most one process does it at a time (the others lease from what is there). Returns how
        many ids came over (0 when none were needed, none were left, or another process is at
        it)."""
        low, size = max(self.window // 2, need), max(self.window, need)
        pipe = self.redis.pipeline(transaction=False)
        pipe.zcard(self.queue_key)
        pipe.get(self.cursor_key)
        depth, raw = pipe.execute()
        after, exhausted = _parse_cursor(raw)
        if after is None or exhausted or int(depth) >= low:
            return 0  # no cursor: nothing started yet, or Redis lost it (see rebuild_if_lost)
        token = self._lock(lock_seconds)
        if token is None:
            return 0
        try:
            depth = int(self.redis.zcard(self.queue_key))
            raw = self.redis.get(self.cursor_key)
            after, exhausted = _parse_cursor(raw)
            if after is None or exhausted or depth >= low:
                return 0
            limit = size - depth
            pairs = list(load(after, limit))
            return max(0, self._bring(raw, pairs, exhausted=len(pairs) < limit))
        finally:
            self._unlock(token)

    def rebuild_if_lost(self, load: Loader, lock_seconds: float = 30.0) -> int | None:
        """Rebuild the window from the start of SQL's pending tasks when Redis lost the queue (or
        holds none of what SQL still has to do); at most one process does it at a time.

        Only when :meth:`is_empty`: a rebuild while leases are outstanding would hand the leased
        ids out a second time. Returns how many ids came over, or None when another process
        holds the lock or the queue is not empty after all.
        """
        token = self._lock(lock_seconds)
        if token is None:
            return None
        try:
            if not self.is_empty():
                return None
            self.redis.delete(self.cursor_key)
            pairs = list(load(None, self.window))
            return self._bring(None, pairs, exhausted=len(pairs) < self.window)
        finally:
            self._unlock(token)

    def cursor(self) -> tuple[Cursor | None, bool]:
        """The last ``(priority, item id)`` brought over from SQL, and whether SQL had no more."""
        return _parse_cursor(self.redis.get(self.cursor_key))

    def _bring(self, expected: bytes | str | None, pairs: Pairs, exhausted: bool) -> int:
        """Push ``pairs`` (in queue order) and move the cursor to the last; -1 when the cursor is
        no longer ``expected``. In chunks of ``_CHUNK``, each one script that checks and moves
        the cursor, so no single call holds Redis for long (one call for a million ids timed out
        its client), and a chunk only lands behind the one before it."""
        expected_s = "" if expected is None else (expected.decode() if isinstance(expected, bytes) else expected)
        if not pairs:
            if expected is None:  # nothing pending at all: the cursor stays absent
                return 0
            after, _ = _parse_cursor(expected)
            assert after is not None
            return self._fill_chunk(expected_s, [], (after[1], after[0]), exhausted)
        brought = 0
        for start in range(0, len(pairs), _CHUNK):
            chunk = pairs[start : start + _CHUNK]
            last = start + _CHUNK >= len(pairs)
            n = self._fill_chunk(expected_s, chunk, chunk[-1], exhausted and last)
            if n < 0:
                return -1 if brought == 0 else brought
            brought += n
            expected_s = _cursor_value(chunk[-1], exhausted and last)
        return brought

    def _fill_chunk(self, expected: str, pairs: Pairs, last: tuple[int, float], exhausted: bool) -> int:
        args: list[str | float] = [expected, _cursor_value(last, exhausted)]
        for item_id, priority in pairs:
            args += [_member(item_id), repr(float(priority))]
        return int(self._fill(keys=[self.queue_key, self.prio_key, self.cursor_key], args=args))

    def _lock(self, seconds: float) -> str | None:
        token = f"{time.time()!r}:{id(self)}"
        return token if self.redis.set(self.rebuild_lock_key, token, nx=True, ex=max(1, int(seconds))) else None

    def _unlock(self, token: str) -> None:
        if self.redis.get(self.rebuild_lock_key) == token.encode():
            self.redis.delete(self.rebuild_lock_key)
