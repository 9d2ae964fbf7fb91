"""An upgrade's gauges end with it (service.metrics.remove_upgrade): in one process, and in
prometheus-client's multiprocess mode, where several real processes write one metrics directory
and the series a scrape shows are those of every process of the container."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from tests.deploy.prom import REPO


def _series(text: str) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {
        (s.name, tuple(sorted(s.labels.items())))
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "upgrade" in s.labels
    }


def test_remove_upgrade_drops_every_gauge_of_that_upgrade_only() -> None:
    gone, kept = "910001", "910002"
    for up in (gone, kept):
        metrics.BACKFILL_PROGRESS.labels(up).set(0.5)
        metrics.BACKFILL_QUEUE_DEPTH.labels(up).set(7)
        metrics.LIVE_NFR.labels(up, "dual").set(0.06)
        metrics.LIVE_NFR.labels(up, "transform").set(0.08)
        metrics.LIVE_NFR_BOUND.labels(up, "dual").set(0.057)
        metrics.LIVE_MAP.labels(up, "dual").set(0.7)
        metrics.SERVING_PLAN.labels(up, "dual").set(1)
        metrics.BACKFILL_ITEMS.labels(up, "done").inc(3)
    assert {gone, kept} <= metrics.upgrades_with_series()

    metrics.remove_upgrade(int(gone))

    text = metrics.render_latest()[0].decode()
    upgrades = {dict(labels)["upgrade"] for name, labels in _series(text) if not name.endswith(("_total", "_created"))}
    assert gone not in upgrades and kept in upgrades
    assert gone not in metrics.upgrades_with_series()
    # every gauge labelled by upgrade is covered, and the counters (the upgrade's history) stay
    assert {g._name for g in metrics.upgrade_gauges()} >= {
        "hotrefresh_backfill_progress_ratio",
        "hotrefresh_backfill_queue_depth",
        "hotrefresh_live_nfr_ratio",
        "hotrefresh_live_nfr_bound_ratio",
        "hotrefresh_live_map_ratio",
        "hotrefresh_serving_plan",
    }
    assert ("hotrefresh_backfill_items_total", (("status", "done"), ("upgrade", gone))) in _series(text)
    metrics.remove_upgrade(kept)


_SETTER = """
import sys
from service import metrics
for up in sys.argv[1:]:
    metrics.BACKFILL_PROGRESS.labels(up).set(0.25)
    metrics.LIVE_NFR.labels(up, "dual").set(0.06)
    metrics.LIVE_NFR_BOUND.labels(up, "dual").set(0.057)
    metrics.SERVING_PLAN.labels(up, "dual").set(1)
    metrics.BACKFILL_ITEMS.labels(up, "done").inc(4)
"""
_REMOVER = "import sys; from service import metrics; metrics.remove_upgrade(sys.argv[1])"
_SCRAPE = """
from service import metrics
print(sorted(metrics.upgrades_with_series()))
print(metrics.render_latest()[0].decode())
"""


def _run(code: str, prom_dir: Path, *args: str) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(prom_dir), "PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_multiprocess_a_process_that_sees_the_end_removes_series_another_process_set(tmp_path: Path) -> None:
    """A pool process set the gauges of upgrades 5 and 6; another process of the container (the
    watchdog's, say) sees 5 end and removes it. A scrape, from a third process, shows 6 only,
    and still the counters of both."""
    _run(_SETTER, tmp_path, "5", "6")
    listed, before = _run(_SCRAPE, tmp_path).split("\n", 1)
    assert listed == "['5', '6']"
    assert ("hotrefresh_live_nfr_bound_ratio", (("plan", "dual"), ("upgrade", "5"))) in _series(before)

    _run(_REMOVER, tmp_path, "5")

    listed, after = _run(_SCRAPE, tmp_path).split("\n", 1)
    assert listed == "['6']"
    series = _series(after)
    gauges = {(name, labels) for name, labels in series if not name.endswith("_total")}
    assert {dict(labels)["upgrade"] for _, labels in gauges} == {"6"}
    assert ("hotrefresh_live_nfr_ratio", (("plan", "dual"), ("upgrade", "6"))) in series
    counters = {dict(labels)["upgrade"] for name, labels in series if name == "hotrefresh_backfill_items_total"}
    assert counters == {"5", "6"}
