"""The workers' Celery app, built from settings on first use (never at import time).

It consumes what ``service.dispatch`` sends: the task names, queue, broker key prefix and JSON
serialisation come from :func:`service.dispatch.broker_conf`, so producers and this consumer
cannot drift apart. What is set here is how a worker runs tasks, for this job (re-encoding a
gallery in leased batches):

- ``task_acks_late=True``: a task's message is acknowledged only after the task returns, so a
  worker killed mid-task (SIGKILL, OOM, a lost node) leaves the message to be delivered again.
  That is only safe for idempotent tasks, and ours are: scoring replaces what it writes, and a
  drain task re-leases from the queue, where SQL (not the message) says what is left to do.
- ``task_reject_on_worker_lost=True``: when the pool child running a task dies, requeue the
  message instead of marking it failed (the default with acks_late would ack it and lose it).
- ``worker_prefetch_multiplier=1``: a worker reserves no more messages than it can run. Drain
  tasks last seconds each; prefetching them would park work behind a busy process while
  another worker idles, and a killed worker would take a pile of reserved messages with it.
- The broker's ``visibility_timeout`` (in ``broker_conf``) must exceed the longest task (a drain
  task runs for ``drain_budget_seconds``; scoring a large gallery for longer, and a duplicate
  scoring run is harmless because it is guarded by a lock and a conditional state change).
  Items are *not* protected by this timeout but by the queue's own per-item leases
  (``lease_seconds``), so a dead worker's items come back in seconds, not minutes.
- ``task_ignore_result=True`` (in ``broker_conf``): nobody waits for a task's return value (the
  state is in SQL); the result backend is configured for completeness but never written.
"""

from __future__ import annotations

from celery import Celery

from service.dispatch import broker_conf, queue_name
from service.settings import Settings, get_settings

__all__ = ["get_app", "queue_name"]

_APPS: dict[tuple[str, str, float], Celery] = {}


def get_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    key = (settings.effective_redis_url, settings.redis_prefix, settings.visibility_timeout_seconds)
    app = _APPS.get(key)
    if app is None:
        app = Celery("hotrefresh", broker=key[0], backend=key[0], include=["workers.tasks"])
        app.conf.update(
            **broker_conf(settings),
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
            worker_hijack_root_logger=False,
            worker_send_task_events=False,
        )
        _APPS[key] = app
    return app
