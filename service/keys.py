"""Every Redis key hotrefresh writes, named in one place, with the lifetimes that belong to them.

Redis holds only derived state (docs/design.md, invariant 2), so nothing here is precious: a
key lost to a restart is rebuilt from SQL or re-created by whoever needs it. All keys start with
``settings.redis_prefix``, so several deployments or test runs can share one server.

| key | type | written by | what it holds |
| --- | --- | --- | --- |
| ``{p}:indexlog`` | stream | API, workers | the index log (``service.indexlog``) |
| ``{p}:indexlog:epoch`` | string | first writer | token created with the stream; gone = Redis lost it |
| ``{p}:upgrade:{id}:queue`` | zset | scoring, workers | item member -> priority (``service.queue``) |
| ``{p}:upgrade:{id}:leases`` | zset | workers | item member -> lease deadline |
| ``{p}:upgrade:{id}:prio`` | hash | scoring | item member -> priority, to requeue an expired lease |
| ``{p}:upgrade:{id}:cursor`` | string | scoring, workers | the window's last id from SQL, and whether SQL had more |
| ``{p}:upgrade:{id}:rebuild-lock`` | string | workers | one process refills the window or rebuilds it from SQL |
| ``{p}:upgrade:{id}:barrier`` | string | checkpoint measurer | while set, nobody leases |
| ``{p}:upgrade:{id}:throttle`` | hash | workers | the token bucket: tokens, when refilled (``service.throttle``) |
| ``{p}:upgrade:{id}:throttle-rate`` | string | API, workers | the rate from SQL, items/s (0: unlimited), for 5 s |
| ``{p}:upgrade:{id}:checkpoint:{step}`` | string | workers | a checkpoint step claimed (measured once) |
| ``{p}:upgrade:{id}:scoring-lock`` | string | scoring task | one scoring run at a time |
| ``{p}:upgrade:{id}:drain-alive`` | string | drain tasks | heartbeat: some drain chain is running |
| ``{p}:upgrade:{id}:kick-score`` / ``kick-drain`` | string | watchdog | one watchdog re-sends work |
| ``{p}:celery:*`` | various | Celery | the broker's own keys (``service.dispatch``) |
"""

from __future__ import annotations

from service.settings import Settings

# The throttle's rate is copied from SQL into Redis for this long: a worker that finds it gone
# reads SQL again, so a rate whose Redis write failed (or a Redis restarted from an old dump)
# is corrected within this time; the API's own write reaches the workers at their next take.
THROTTLE_RATE_TTL_S = 5
# An idle token bucket is forgotten after this (a new one starts full: one batch).
THROTTLE_BUCKET_TTL_S = 3600

# A claimed checkpoint step is remembered this long: far longer than any upgrade's backfill.
CHECKPOINT_CLAIM_TTL_S = 86_400


def key(settings: Settings, *parts: object) -> str:
    return ":".join([settings.redis_prefix, *(str(p) for p in parts)])


def indexlog_stream(settings: Settings) -> str:
    return key(settings, "indexlog")


def indexlog_epoch(settings: Settings) -> str:
    return key(settings, "indexlog", "epoch")


def celery_prefix(settings: Settings) -> str:
    """Prefix of every key the Celery broker writes (its ``global_keyprefix``)."""
    return key(settings, "celery") + ":"


def upgrade_key(settings: Settings, upgrade_id: int, name: str, *more: object) -> str:
    return key(settings, "upgrade", int(upgrade_id), name, *more)


def queue(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "queue")


def cursor(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "cursor")


def leases(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "leases")


def priorities(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "prio")


def rebuild_lock(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "rebuild-lock")


def barrier(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "barrier")


def throttle_bucket(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "throttle")


def throttle_rate(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "throttle-rate")


def checkpoint_claim(settings: Settings, upgrade_id: int, step: int) -> str:
    return upgrade_key(settings, upgrade_id, "checkpoint", int(step))


def scoring_lock(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "scoring-lock")


def drain_alive(settings: Settings, upgrade_id: int) -> str:
    return upgrade_key(settings, upgrade_id, "drain-alive")


def kick(settings: Settings, upgrade_id: int, what: str) -> str:
    """The watchdog's claim to re-send ``what`` ("score" or "drain") for an upgrade."""
    return upgrade_key(settings, upgrade_id, f"kick-{what}")


def liveness_ttl(settings: Settings) -> int:
    """Seconds a drain heartbeat (and a watchdog kick) lives: three drain budgets, at least 5 s.

    A chain beats at least once per drain task, so an absent key means no chain has run for
    three budgets: the watchdog then restarts the chains."""
    return max(5, int(3 * settings.drain_budget_seconds))


def scoring_lock_ttl(settings: Settings) -> int:
    """A scoring run holds its lock at most as long as the broker would take to redeliver it."""
    return int(settings.visibility_timeout_seconds)
