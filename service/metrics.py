"""Every Prometheus metric of hotrefresh, defined once.

API replicas (uvicorn) and Celery worker processes all import this module. When
``PROMETHEUS_MULTIPROC_DIR`` is set, prometheus-client writes each process's samples to
that directory and :func:`render_latest` aggregates them, so counters from many processes
add up right when Prometheus scrapes any one of them. Gauges use ``livemostrecent`` (the
latest value written by a live process) because progress, queue depth and live NFR are
facts about the upgrade, not sums over processes.

An upgrade's gauges (every gauge with an ``upgrade`` label) live only while it does:
:func:`remove_upgrade` drops them when it ends, so a finished upgrade neither pages nor shows a
frozen last value. prometheus-client cannot remove a series in multiprocess mode (the value stays
in each process's file), so there a removal writes NaN with the current time (with
``livemostrecent`` the newest write wins across processes) and :func:`collector_registry` leaves NaN
samples of those gauges out of every scrape.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
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
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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
    "Items of the upgrade still to backfill (the whole queue, in SQL; Redis holds a window of it).",
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
# The probe NFR@1 the upgrade may reach (service.upgrade.checkpoints.alert_bound: under auto the
# chooser's bound at that cut), one series per plan like LIVE_NFR, so the alert compares each
# plan's NFR with the bound it was measured against.
LIVE_NFR_BOUND = Gauge(
    "live_nfr_bound_ratio",
    "The probe NFR@1 the upgrade may reach at its latest checkpoint (auto: the chooser's bound), per query plan.",
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


UPGRADE_LABEL = "upgrade"


def upgrade_gauges() -> list[Gauge]:
    """Every gauge of this module labelled by upgrade: the series that end with their upgrade
    (a gauge added here later is covered without a list to keep up to date)."""
    return [g for g in globals().values() if isinstance(g, Gauge) and UPGRADE_LABEL in g._labelnames]


class _LiveCollector(Collector):
    """The samples of every process in ``PROMETHEUS_MULTIPROC_DIR``, less removed series."""

    def __init__(self) -> None:
        self._inner = _mp.MultiProcessCollector(None)

    def collect(self) -> Iterator[Metric]:
        for metric in self._inner.collect():
            if metric.type == "gauge":  # a removed upgrade series reads NaN: leave it out
                metric.samples = [s for s in metric.samples if not (UPGRADE_LABEL in s.labels and math.isnan(s.value))]
            yield metric


def collector_registry() -> CollectorRegistry:
    """What a scrape of this process serves: every process of the container in multiprocess
    mode (removed series left out), else this process's default registry."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        registry.register(_LiveCollector())
        return registry
    from prometheus_client import REGISTRY

    return REGISTRY


def render_latest() -> tuple[bytes, str]:
    """The exposition text for /metrics, aggregated over processes when in multiprocess mode."""
    return generate_latest(collector_registry()), CONTENT_TYPE_LATEST


def _upgrade_series() -> Iterator[tuple[Gauge, dict[str, str], float]]:
    """(gauge, labels, value) of every upgrade gauge's series as a scrape would see them: over
    every process in multiprocess mode (tombstones included, as NaN), else this process's."""
    gauges = {g._name: g for g in upgrade_gauges()}
    metrics: Iterable[Metric] = (
        _mp.MultiProcessCollector(None).collect()
        if multiprocess_enabled()
        else (m for g in gauges.values() for m in g.collect())
    )
    for metric in metrics:
        gauge = gauges.get(metric.name)
        if gauge is not None:
            yield from ((gauge, s.labels, s.value) for s in metric.samples if UPGRADE_LABEL in s.labels)


def upgrades_with_series() -> set[str]:
    """The upgrades (their label values) with a gauge series that a scrape would show."""
    return {labels[UPGRADE_LABEL] for _, labels, value in _upgrade_series() if not math.isnan(value)}


def remove_upgrade(upgrade_id: int | str) -> None:
    """Drop every gauge series of one upgrade (progress, queue depth, live NFR, its bound, mAP,
    serving plan, ...): called wherever a process sees the upgrade end, so that it stops
    reporting the upgrade's last values. Counters stay: they are its history."""
    label = str(upgrade_id)
    if not multiprocess_enabled():
        for gauge in upgrade_gauges():
            gauge.remove_by_labels({UPGRADE_LABEL: label})
        return
    for gauge, labels, value in list(_upgrade_series()):
        if labels[UPGRADE_LABEL] == label and not math.isnan(value):
            gauge.labels(*(labels[n] for n in gauge._labelnames)).set(math.nan)


def mark_process_dead(pid: int) -> None:
    """Called when a worker child exits so its live gauges stop being reported."""
    if multiprocess_enabled():
        _mp.mark_process_dead(pid)
