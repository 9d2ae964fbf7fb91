"""Every Prometheus metric of hotrefresh, defined once.

API replicas (uvicorn) and Celery worker processes all import this module. When
``PROMETHEUS_MULTIPROC_DIR`` is set, prometheus-client writes each process's samples to
that directory and :func:`render_latest` aggregates them, so counters from many processes
add up right when Prometheus scrapes any one of them. Gauges use ``livemostrecent`` (the
latest value written by a live process) because progress, queue depth and live NFR are
facts about the upgrade, not sums over processes.
"""

from __future__ import annotations

import os
from typing import Final, Literal

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as _mp

NAMESPACE = "hotrefresh"
_GAUGE_MODE: Final[Literal["livemostrecent"]] = "livemostrecent"

BACKFILL_ITEMS = Counter(
    "backfill_items", "Gallery items processed by backfill workers.", ["upgrade", "status"], namespace=NAMESPACE
)
BACKFILL_PROGRESS = Gauge(
    "backfill_progress_ratio",
    "Fraction of the upgrade's items on the new model.",
    ["upgrade"],
    namespace=NAMESPACE,
    multiprocess_mode=_GAUGE_MODE,
)
BACKFILL_QUEUE_DEPTH = Gauge(
    "backfill_queue_depth",
    "Items waiting in the backfill queue (not leased).",
    ["upgrade"],
    namespace=NAMESPACE,
    multiprocess_mode=_GAUGE_MODE,
)
BACKFILL_THROTTLE = Gauge(
    "backfill_throttle_items_per_second",
    "The backfill's throttle the workers hold together (items/s, set per upgrade); 0: unlimited.",
    ["upgrade"],
    namespace=NAMESPACE,
    multiprocess_mode=_GAUGE_MODE,
)
BACKFILL_BATCH_SECONDS = Histogram(
    "backfill_batch_seconds",
    "Wall time to lease, encode, store and log one backfill batch.",
    namespace=NAMESPACE,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# One series per query plan measured at the upgrade's checkpoints (under "auto": every candidate,
# all written at each checkpoint, so none goes stale); SERVING_PLAN says which one replicas serve.
LIVE_NFR = Gauge(
    "live_nfr_ratio",
    "Negative-flip rate at top-1 of the probe set against the live mixed index, per query plan.",
    ["upgrade", "plan"],
    namespace=NAMESPACE,
    multiprocess_mode=_GAUGE_MODE,
)
LIVE_MAP = Gauge(
    "live_map_ratio",
    "mAP of the probe set against the live mixed index, per query plan.",
    ["upgrade", "plan"],
    namespace=NAMESPACE,
    multiprocess_mode=_GAUGE_MODE,
)
SERVING_PLAN = Gauge(
    "serving_plan",
    "1 for the query plan replicas serve during the upgrade, 0 for the other candidates.",
    ["upgrade", "plan"],
    namespace=NAMESPACE,
    multiprocess_mode=_GAUGE_MODE,
)
GALLERY_VECTORS = Gauge(
    "gallery_vectors",
    "Live vectors in this process's index, per model segment.",
    ["model"],
    namespace=NAMESPACE,
    multiprocess_mode=_GAUGE_MODE,
)
SEARCH_SECONDS = Histogram(
    "search_seconds",
    "Wall time of POST /search (decode, encode, search).",
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
SEARCH_REQUESTS = Counter("search_requests", "POST /search requests by outcome.", ["status"], namespace=NAMESPACE)
# Every route (service.api.http_metrics), labelled by its template (/gallery/{external_id}, never
# the raw path: one series per route, not per id), method and status class (2xx ... 5xx).
# The two /search metrics above stay: the dashboard and docs/deploy.md read them.
HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests answered, by route template, method and status class.",
    ["route", "method", "status"],
    namespace=NAMESPACE,
)
HTTP_SECONDS = Histogram(
    "http_request_seconds",
    "Wall time from a request's arrival to the end of its answer, by route template and method.",
    ["route", "method"],
    namespace=NAMESPACE,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INDEX_LOG_LAG = Gauge(
    "index_log_lag_seconds",
    "Age of the newest index-log entry this replica has not yet applied.",
    namespace=NAMESPACE,
    multiprocess_mode="max",
)

# Requests answered 503 because the database or Redis was unreachable (service.api.app), by
# dependency; both series exist at 0 from the start, so increase() sees the first outage.
DEPENDENCY_UNAVAILABLE = Counter(
    "dependency_unavailable",
    "API requests answered 503 because a dependency was unreachable.",
    ["dependency"],
    namespace=NAMESPACE,
)
for _dependency in ("database", "redis"):
    DEPENDENCY_UNAVAILABLE.labels(_dependency)

# No labels: the series exists at 0 from the start, so increase() sees the first relayed entry
# (a series born at 3 has no increase); which ops were relayed is in the replica's log.
INDEX_LOG_RELAYED = Counter(
    "index_log_relayed",
    "Index-log entries a replica published for a writer that had left them staged "
    "(died after its SQL commit, or Redis refused the append).",
    namespace=NAMESPACE,
)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def render_latest() -> tuple[bytes, str]:
    """The exposition text for /metrics, aggregated over processes when in multiprocess mode."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        _mp.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int) -> None:
    """Called when a worker child exits so its live gauges stop being reported."""
    if multiprocess_enabled():
        _mp.mark_process_dead(pid)
