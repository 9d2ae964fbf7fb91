"""Every Celery send of hotrefresh, by task name: the API, the tasks and the watchdog put work on
the broker only through here, so none of them imports the worker package.

``send_task`` by name needs no task code, only the broker's address and the wire contract
this module owns: the task names, the queue, the broker's key prefix and JSON. The workers'
Celery app (``workers.celery_app``) consumes with the same contract (:func:`broker_conf`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

from celery import Celery

from service import keys
from service.settings import Settings

log = logging.getLogger(__name__)

SCORE_TASK = "hotrefresh.score"
DRAIN_TASK = "hotrefresh.drain"


def queue_name(settings: Settings) -> str:
    return f"{settings.redis_prefix}.backfill"


def broker_conf(settings: Settings) -> dict[str, object]:
    """What producers and consumers must agree on. ``visibility_timeout`` is how long Redis keeps
    an unacknowledged message before another worker gets it (it must exceed the longest task);
    ``global_keyprefix`` keeps every broker key under ``{redis_prefix}:celery:``."""
    prefix = keys.celery_prefix(settings)
    return {
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_seconds,
            "global_keyprefix": prefix,
        },
        "result_backend_transport_options": {"global_keyprefix": prefix},
        "task_default_queue": queue_name(settings),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "broker_connection_retry_on_startup": True,
        "task_send_sent_event": False,
        "enable_utc": True,
    }


_PRODUCERS: dict[tuple[int, str, str, float], Celery] = {}
_PRODUCERS_LOCK = threading.Lock()


def producer(settings: Settings) -> Celery:
    """A Celery app that only sends, one per broker configuration (the API and the watchdog make
    no worker app). Not the "current" app: in a worker process that stays the worker's own.
    Keyed by pid as well: a forked pool child must not share its parent's broker connections."""
    key = (os.getpid(), settings.effective_redis_url, settings.redis_prefix, settings.visibility_timeout_seconds)
    with _PRODUCERS_LOCK:
        app = _PRODUCERS.get(key)
        if app is None:
            app = Celery("hotrefresh-producer", broker=key[1], backend=key[1], set_as_current=False)
            app.conf.update(**broker_conf(settings))
            _PRODUCERS[key] = app
        return app


def send_score(settings: Settings, upgrade_id: int) -> None:
    producer(settings).send_task(SCORE_TASK, args=[int(upgrade_id)], queue=queue_name(settings))


def send_drains(settings: Settings, upgrade_id: int, n: int | None = None, countdown: float | None = None) -> None:
    """Start ``n`` (default ``settings.drain_chains``) parallel drain chains for an upgrade."""
    app = producer(settings)
    for _ in range(n or settings.drain_chains):
        app.send_task(DRAIN_TASK, args=[int(upgrade_id)], queue=queue_name(settings), countdown=countdown)


def try_send(what: str, send: Callable[..., None], *args: object) -> bool:
    """Send work after an SQL change has committed; if the broker is briefly away the change
    stands and the workers' watchdog sends the work later, so a failure is logged, not raised."""
    try:
        send(*args)
    except Exception:  # the SQL change stands; the watchdog re-sends
        log.exception("could not dispatch %s; the worker watchdog will", what)
        return False
    return True
