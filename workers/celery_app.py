"""The Celery app, built from settings on first use (never at import time), and the two calls the
API and the watchdog use to put work on it.

Why these settings, for this job (re-encoding a gallery in leased batches):

- ``task_acks_late=True``: a task's message is acknowledged only after the task returns, so a
  worker killed mid-task (SIGKILL, OOM, a lost node) leaves the message to be delivered again.
  That is only safe for idempotent tasks, and ours are: scoring replaces what it writes, and a
  drain task re-leases from the queue, where SQL (not the message) says what is left to do.
- ``task_reject_on_worker_lost=True``: when the pool child running a task dies, requeue the
  message instead of marking it failed (the default with acks_late would ack it and lose it).
- ``worker_prefetch_multiplier=1``: a worker reserves no more messages than it can run. Drain
  tasks last seconds each; prefetching them would park work behind a busy process while
  another worker idles, and a killed worker would take a pile of reserved messages with it.
- ``broker_transport_options.visibility_timeout``: how long Redis keeps an unacknowledged
  message before handing it to another worker. It must exceed the longest task (a drain task
  runs for ``drain_budget_seconds``; scoring a large gallery for longer, and a duplicate
  scoring run is harmless because it is guarded by a lock and a conditional state change).
  Items are *not* protected by this timeout but by the queue's own per-item leases
  (``lease_seconds``), so a dead worker's items come back in seconds, not minutes.
- ``global_keyprefix``: every broker key lives under ``{redis_prefix}:celery:`` so several
  deployments (or test runs) can share one Redis, and so the index log and queue keys are not
  mistaken for Celery's.
- ``task_ignore_result=True``: nobody waits for a task's return value (the state is in SQL); the
  result backend is configured for completeness but never written.
- JSON only: no pickled remote calls.
"""

from __future__ import annotations

from functools import lru_cache

from celery import Celery

from service.settings import Settings, get_settings

SCORE_TASK = "hotrefresh.score"
DRAIN_TASK = "hotrefresh.drain"


def queue_name(settings: Settings) -> str:
    return f"{settings.redis_prefix}.backfill"


@lru_cache(maxsize=8)
def _build(redis_url: str, prefix: str, visibility_timeout: float) -> Celery:
    app = Celery("hotrefresh", broker=redis_url, backend=redis_url, include=["workers.tasks"])
    keyprefix = f"{prefix}:celery:"
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": visibility_timeout, "global_keyprefix": keyprefix},
        result_backend_transport_options={"global_keyprefix": keyprefix},
        task_ignore_result=True,
        task_default_queue=f"{prefix}.backfill",
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        enable_utc=True,
    )
    return app


def get_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    return _build(settings.effective_redis_url, settings.redis_prefix, settings.visibility_timeout_seconds)


def send_score(settings: Settings, upgrade_id: int) -> None:
    get_app(settings).send_task(SCORE_TASK, args=[int(upgrade_id)], queue=queue_name(settings))


def send_drains(
    settings: Settings, upgrade_id: int, n: int | None = None, countdown: float | None = None
) -> None:
    """Start ``n`` (default ``settings.drain_chains``) parallel drain chains for an upgrade."""
    app = get_app(settings)
    for _ in range(n or settings.drain_chains):
        app.send_task(DRAIN_TASK, args=[int(upgrade_id)], queue=queue_name(settings), countdown=countdown)
