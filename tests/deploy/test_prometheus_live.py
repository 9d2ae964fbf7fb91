"""The Grafana dashboard and the alert rules, proven on a real Prometheus scraping a real
upgrade: an API (uvicorn) and a Celery worker started as processes, a real Redis and
PostgreSQL, Fashion-MNIST images, one of them corrupted in the image store so the failure
counter exists. The upgrade is held paused by its own NFR guardrail at its first checkpoint that
flips a probe: every live gauge of it is scraped, every alert rule evaluates cleanly with all the
series it reads present, and the NFR rule agrees with the NFR and its bound. Resumed to the
end, the upgrade's gauges disappear from the scrape, every dashboard query has drawn finite data
over the run, no rule fires on the finished upgrade, and the worker-down rule fires once the
worker is killed. No Grafana server runs on this machine kind, so this (with the schema check of
test_dashboard_schema.py) is the dashboard's test. No timing thresholds: every wait is for a
condition."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cli.launcher import System
from models.data import encode_png as _png
from service.imagestore import LocalImageStore, content_key
from tests.deploy.prom import (
    DASHBOARD_VARIABLES,
    alert_rules,
    dashboard_queries,
    local_config,
    prometheus_binary,
    run_prometheus,
    selectors,
)
from tests.utils.env import ADMIN_TOKEN, isolated_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.timeout(300),
    pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed (Debian 'prometheus')"),
]

N_GALLERY = 160
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def system(tmp_path: Path, postgres_url: str, redis_prefix: str) -> Iterator[System]:
    env = {
        **isolated_env(tmp_path, postgres_url, redis_prefix),
        "HOTREFRESH_DEVICE": "cpu",
        "HOTREFRESH_BATCH_SIZE": "16",
        "HOTREFRESH_MAX_ATTEMPTS": "1",
        "HOTREFRESH_LEASE_SECONDS": "10",
        "HOTREFRESH_PROBE_SIZE": "60",
        "HOTREFRESH_NFR_CHECKPOINT_EVERY": "0.1",
        "HOTREFRESH_INDEX_LOG_POLL_MS": "50",
    }
    with System(tmp_path / "system", env=env) as sys_:
        yield sys_


def _searches(api: str, images: list[bytes], stop: threading.Event) -> None:
    """Keeps /search busy (so the latency histogram and request counter move) until stopped."""
    with httpx.Client(base_url=api, timeout=30.0) as client:
        i = 0
        while not stop.is_set():
            image = images[i % len(images)]
            client.post("/search", params={"k": 5}, files={"image": ("q.png", image, "image/png")})
            i += 1
            stop.wait(0.05)


def test_dashboard_and_alerts_on_a_real_upgrade(system: System, tmp_path: Path) -> None:
    from models.data import load_fashion_mnist
    from tests.utils.checkpoints import make_tiny_checkpoint

    old_ckpt, new_ckpt = tmp_path / "old.pt", tmp_path / "new.pt"
    make_tiny_checkpoint(old_ckpt, "mon-old", arch="conv2", seed=0)
    make_tiny_checkpoint(new_ckpt, "mon-new", arch="conv4", compatible_with="mon-old", trained_with="ract", seed=1)
    pixels, labels = load_fashion_mnist("test")
    pngs = [_png(pixels[i]) for i in range(N_GALLERY)]

    api = system.start_api()
    worker = system.start_worker(concurrency=1)
    assert api.url and worker.url
    targets = {
        "hotrefresh-api": [api.url.removeprefix("http://")],
        "hotrefresh-worker": [worker.url.removeprefix("http://")],
    }

    with (
        run_prometheus(tmp_path / "prometheus", local_config(targets)) as prom,
        httpx.Client(base_url=api.url, timeout=60.0) as client,
    ):
        prom.wait_targets_up(2)

        for ckpt in (old_ckpt, new_ckpt):
            r = client.post("/models", headers=AUTH, files={"file": (ckpt.name, ckpt.read_bytes())})
            assert r.status_code == 201, r.text
        # the last item carries no label, so it is never a probe
        last = N_GALLERY - 1
        for start in range(0, last, 40):
            batch = range(start, min(start + 40, last))
            data = {"external_id": [f"fm-{i}" for i in batch], "label": [str(int(labels[i])) for i in batch]}
            r = client.post(
                "/gallery",
                headers=AUTH,
                data=data,
                files=[("image", (f"{i}.png", pngs[i], "image/png")) for i in batch],
            )
            assert r.status_code == 201, r.text
        r = client.post(
            "/gallery",
            headers=AUTH,
            data={"external_id": f"fm-{last}"},
            files=[("image", (f"{last}.png", pngs[last], "image/png"))],
        )
        assert r.status_code == 201, r.text

        stop = threading.Event()
        searcher = threading.Thread(target=_searches, args=(api.url, pngs[:20], stop), daemon=True)
        searcher.start()
        try:
            # nfr_guardrail 0: the first checkpoint that flips a probe pauses the upgrade, which
            # holds it, every live gauge set, for as long as the test looks (untrained models
            # flip many probes); then it is resumed, at each such pause, to the end.
            r = client.post(
                "/upgrade",
                headers=AUTH,
                json={"model": "mon-new", "strategy": "margin", "batch_size": 16, "nfr_guardrail": 0.0},
            )
            assert r.status_code == 202, r.text
            upgrade_id = r.json()["id"]
            label = str(upgrade_id)
            started = time.time()
            up = _wait_state(client, upgrade_id, ("paused", "completed"), worker)
            assert up["state"] == "paused" and "guardrail" in (up["error"] or ""), up

            # Paused: the upgrade's live series are all there, and the NFR rule agrees with them.
            live = {name: prom.wait_for(f'{name}{{upgrade="{label}"}}') for name in LIVE_GAUGES}
            served = {s["metric"]["plan"] for s in live["hotrefresh_serving_plan"] if float(s["value"][1]) == 1}
            assert len(served) == 1, live["hotrefresh_serving_plan"]
            (plan,) = served
            nfr = _value(live["hotrefresh_live_nfr_ratio"], plan)
            bound = _value(live["hotrefresh_live_nfr_bound_ratio"], plan)
            assert nfr == pytest.approx(up["nfr"]) and nfr > 0, (nfr, up["nfr"])
            assert bound == pytest.approx(up["checkpoints"][-1]["nfr_bound"]), (bound, up["checkpoints"][-1])
            assert bool(prom.query(alert_expr("HotrefreshLiveNfrOverBound"))) == (nfr > bound), (nfr, bound)
            # An item still queued (not a probe) gets an unreadable image: it fails once resumed,
            # after its counter series was scraped at 0, so the Failures panel's increase sees it.
            broken = _corrupt_a_queued_item(system, upgrade_id, pngs)
            # Every alert rule evaluates cleanly on Prometheus, and every series it reads exists.
            rules = {r["name"]: r for r in prom.wait_rules_evaluated()}
            for rule in alert_rules():
                name, expr = rule["alert"], rule["expr"]
                assert rules[name]["health"] == "ok", (name, rules[name].get("lastError"))
                for sel in selectors(expr):
                    assert prom.query(sel), f"{name}: {sel} has no series"

            while up["state"] != "completed":
                r = client.post(f"/upgrade/{upgrade_id}/resume", headers=AUTH)
                assert r.status_code == 200, r.text
                up = _wait_state(client, upgrade_id, ("paused", "completed"), worker)
            # the undecodable item failed, then got a mapped vector at the end (service/upgrade/mapping.py)
            assert up["mapped"] == 1 and up["failed"] == 0 and up["done"] == N_GALLERY - 1, up
            failures = client.get(f"/upgrade/{upgrade_id}/failures").json()
            assert [(f["external_id"], f["mapped"]) for f in failures] == [(broken, True)], failures

            # Completed: every process that set a gauge of the upgrade dropped it (the worker's
            # pool process at completion, its watchdog for the rest), so nothing of it is left to
            # alert on; its counters stay.
            for name in LIVE_GAUGES:
                prom.wait_for(f'absent({name}{{upgrade="{label}"}})')
            # Every dashboard query returned finite data while the upgrade ran (a range query
            # over its run, as Grafana draws it), the live panels' while it was paused.
            ended = time.time()
            variables = {**DASHBOARD_VARIABLES, "__rate_interval": "4s", "__range": f"{int(ended - started) + 60}s"}
            results = {title: prom.query_range(expr, started, ended) for title, expr in _queries_of_exported(variables)}
        finally:
            stop.set()
            searcher.join(timeout=30)
        missing = [t for t, res in results.items() if not any(_finite(v) for series in res for v in series["values"])]
        assert not missing, {t: results[t] for t in missing}

        # The numbers agree with the service's own account, summed over processes right.
        items = f'hotrefresh_backfill_items_total{{upgrade="{label}"'
        done = prom.values(f'sum by (upgrade) ({items},status="done"}})')
        failed = prom.values(f'sum by (upgrade) ({items},status="failed"}})')
        mapped = prom.values(f'sum by (upgrade) ({items},status="mapped"}})')
        assert list(done.values()) == [N_GALLERY - 1] and list(failed.values()) == [1], (done, failed)
        assert list(mapped.values()) == [1], mapped
        vectors = prom.values("max by (model) (hotrefresh_gallery_vectors)")
        assert sum(vectors.values()) == N_GALLERY, vectors  # one live vector per item, never two
        by_model = {json.loads(k)["model"]: v for k, v in vectors.items()}
        assert by_model.get("mon-new") == N_GALLERY and not by_model.get("mon-old"), by_model

        # A finished upgrade, every process up: no rule fires (its NFR rule included).
        prom.wait_rules_evaluated()
        for rule in alert_rules():
            assert prom.query(rule["expr"]) == [], rule["alert"]

        # The worker goes away: the worker-down expression turns non-empty.
        system.kill(worker)
        down = prom.wait_for(alert_expr("HotrefreshWorkerDown"))
        assert [s["metric"].get("job") for s in down] == ["hotrefresh-worker"]
        assert prom.query(alert_expr("HotrefreshApiDown")) == []


# The gauges of one upgrade (service.metrics.upgrade_gauges, the throttle's aside: it is only set
# for a throttled upgrade).
LIVE_GAUGES = (
    "hotrefresh_backfill_progress_ratio",
    "hotrefresh_backfill_queue_depth",
    "hotrefresh_live_nfr_ratio",
    "hotrefresh_live_nfr_bound_ratio",
    "hotrefresh_live_map_ratio",
    "hotrefresh_serving_plan",
)


def _wait_state(client: httpx.Client, upgrade_id: int, states: tuple[str, ...], worker: object) -> dict:
    deadline = time.monotonic() + 120
    while True:
        up = client.get(f"/upgrade/{upgrade_id}").json()
        if up["state"] in states:
            return up
        assert up["state"] in ("scoring", "running"), up
        assert time.monotonic() < deadline, f"upgrade never reached {states}: {up}\n{worker.log_tail()}"  # type: ignore[attr-defined]
        time.sleep(0.1)


def _corrupt_a_queued_item(system: System, upgrade_id: int, pngs: list[bytes]) -> str:
    """Overwrite, in the image store, the image of one item the upgrade has not re-encoded yet and
    that is not one of its probes; returns the item's external id."""
    from sqlalchemy import select

    from service.db.schema import BackfillTask, GalleryItem, Upgrade
    from service.db.session import read_scope

    with read_scope(system.env["HOTREFRESH_DATABASE_URL"]) as s:
        probes = set(s.scalar(select(Upgrade.baseline).where(Upgrade.id == upgrade_id))["probe_ids"])
        queued = s.execute(
            select(GalleryItem.id, GalleryItem.external_id)
            .join(BackfillTask, BackfillTask.item_id == GalleryItem.id)
            .where(BackfillTask.upgrade_id == upgrade_id, BackfillTask.status == "pending")
            .order_by(GalleryItem.id.desc())
        ).all()
    keys = [content_key(png) for png in pngs]
    for item_id, external_id in queued:
        i = int(external_id.removeprefix("fm-"))
        if item_id not in probes and keys.count(keys[i]) == 1:  # its image is its own
            store = LocalImageStore(Path(system.env["HOTREFRESH_DATA_DIR"]) / "images")
            store.path_for(keys[i]).write_bytes(b"not an image any more")
            return str(external_id)
    raise AssertionError(f"no queued item to corrupt: {queued}")


def _value(series: list[dict], plan: str) -> float:
    return max(float(s["value"][1]) for s in series if s["metric"]["plan"] == plan)


def _finite(point: list) -> bool:
    return math.isfinite(float(point[1]))


def _queries_of_exported(variables: dict[str, str]) -> list[tuple[str, str]]:
    """The dashboard's queries (every metric they name is exported: test_deploy_config)."""
    return dashboard_queries(variables=variables)


def alert_expr(name: str) -> str:
    return next(r["expr"] for r in alert_rules() if r["alert"] == name)
