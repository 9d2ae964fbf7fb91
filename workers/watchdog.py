"""A thread in every worker's main process that makes sure each active upgrade has work moving.

It restarts what messages alone cannot guarantee: a scoring task whose message was lost (Redis
flushed, or no worker was up and the broker restarted), drain chains that all died (every
worker SIGKILLed, Redis flushed), and it auto-commits a completed upgrade after
``commit_grace_seconds``. Each kick is claimed with ``SET NX`` so that many workers watching the
same upgrade start one set of chains, not one per worker.

It also drops the gauge series of upgrades that have ended (``service.upgrade.gauges``): every
process of the container writes to one metrics directory, and a series set by a pool process
that never saw the end (it was idle when an operator rolled back) would otherwise be scraped,
and alerted on, for as long as the worker runs.
"""

from __future__ import annotations

import logging
import threading
import time

import redis as redis_lib

from service import keys
from service.db.session import read_scope
from service.dispatch import send_drains, send_score
from service.metrics import BACKFILL_QUEUE_DEPTH
from service.repositories import upgrades
from service.settings import Settings
from service.states import COMPLETED, RUNNING, SCORING, TransitionError
from service.timestamps import seconds_since
from service.upgrade import control, gauges, progress

log = logging.getLogger(__name__)


def tick(settings: Settings, redis: redis_lib.Redis) -> list[str]:
    """One look at every active upgrade; returns what was done (for tests and logs)."""
    actions: list[str] = []
    with read_scope(settings.sqlalchemy_url) as s:  # a look: never hold back the writers
        ups = [
            (
                u.id,
                u.state,
                seconds_since(u.completed_at),
                seconds_since(u.updated_at),
                progress.still_to_do(u.total, u.done, u.failed, u.mapped, u.vector_only),
            )
            for u in (upgrades.get_upgrade(s, i) for i in upgrades.active_upgrade_ids(s))
            if u is not None
        ]
    kick_ttl = keys.liveness_ttl(settings)
    for upgrade_id, state, since_completed, since_update, to_do in ups:
        if state == SCORING:
            lock = keys.scoring_lock(settings, upgrade_id)
            # Leave a fresh upgrade to the task POST /upgrade sent; re-send only when none runs.
            if (
                (since_update or 0) > kick_ttl
                and not redis.exists(lock)
                and redis.set(keys.kick(settings, upgrade_id, "score"), "1", nx=True, ex=kick_ttl)
            ):
                send_score(settings, upgrade_id)
                actions.append(f"score:{upgrade_id}")
        elif state == RUNNING:
            BACKFILL_QUEUE_DEPTH.labels(str(upgrade_id)).set(to_do)
            alive = keys.drain_alive(settings, upgrade_id)
            if not redis.exists(alive) and redis.set(
                keys.kick(settings, upgrade_id, "drain"), "1", nx=True, ex=kick_ttl
            ):
                redis.set(alive, "kick", ex=kick_ttl)
                send_drains(settings, upgrade_id)
                actions.append(f"drain:{upgrade_id}")
        elif (
            state == COMPLETED
            and settings.commit_grace_seconds is not None
            and (since_completed is not None and since_completed >= settings.commit_grace_seconds)
        ):
            try:
                control.commit(settings, redis, upgrade_id)
                actions.append(f"commit:{upgrade_id}")
            except (TransitionError, control.UpgradeConflict) as exc:
                log.info("auto-commit of upgrade %s skipped: %s", upgrade_id, exc)
    for label in gauges.drop_ended(settings.sqlalchemy_url):
        log.info("watchdog: dropped the gauges of upgrade %s, which has ended", label)
    return actions


class Watchdog(threading.Thread):
    def __init__(self, settings: Settings, interval: float = 2.0) -> None:
        super().__init__(name="hotrefresh-watchdog", daemon=True)
        self.settings = settings
        self.interval = interval
        self._stop_event = threading.Event()

    def run(self) -> None:
        r = redis_lib.Redis.from_url(self.settings.effective_redis_url)
        last_error = ""
        while not self._stop_event.wait(self.interval):
            try:
                for action in tick(self.settings, r):
                    log.info("watchdog: %s", action)
                last_error = ""
            except Exception as exc:  # noqa: BLE001 - Redis or the database away (or not migrated yet)
                # Once per distinct failure, not every tick: a worker started before the API has
                # migrated the database would otherwise fill its log.
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                if message != last_error:
                    log.warning("watchdog tick failed (will keep trying): %s", message)
                    last_error = message
                time.sleep(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
