"""The Grafana dashboard and the alert rules, proven on a real Prometheus scraping a real
upgrade: an API (uvicorn) and a Celery worker started as processes, a real Redis and
PostgreSQL, Fashion-MNIST images, one of them corrupted in the image store so the failure
counter exists. Every PromQL expression of the dashboard must return finite data; every
alert rule must evaluate cleanly with all the series it reads present, quiet on this healthy
upgrade (the NFR rule agreeing with the NFR values themselves), and the worker-down rule
must fire once the worker is killed. No Grafana server runs on this machine kind, so this
is the dashboard's test. No timing thresholds: every wait is for a condition."""

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
NFR_GUARDRAIL = 0.05  # the threshold of HotrefreshLiveNfrOverGuardrail in docker/alerts.yml


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
        # the last item carries no label, so it is never a probe: its image gets corrupted below
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
        store = LocalImageStore(Path(system.env["HOTREFRESH_DATA_DIR"]) / "images")
        store.path_for(content_key(pngs[last])).write_bytes(b"not an image any more")

        stop = threading.Event()
        searcher = threading.Thread(target=_searches, args=(api.url, pngs[:20], stop), daemon=True)
        searcher.start()
        try:
            r = client.post("/upgrade", headers=AUTH, json={"model": "mon-new", "strategy": "margin", "batch_size": 16})
            assert r.status_code == 202, r.text
            upgrade_id = r.json()["id"]
            deadline = time.monotonic() + 120
            while True:
                up = client.get(f"/upgrade/{upgrade_id}").json()
                if up["state"] in ("completed", "committed", "failed", "cancelled", "rolled_back"):
                    break
                assert time.monotonic() < deadline, f"upgrade did not finish: {up}\n{worker.log_tail()}"
                time.sleep(0.25)
            assert up["state"] == "completed", up
            # the undecodable item failed, then got a mapped vector at the end (service/upgrade/mapping.py)
            assert up["mapped"] == 1 and up["failed"] == 0 and up["done"] == N_GALLERY - 1, up
            assert [f["mapped"] for f in up["failures"]] == [True], up

            # Every dashboard query returns finite data once Prometheus has scraped the end state.
            queries = dashboard_queries()
            results: dict[str, list] = {}
            deadline = time.monotonic() + 30
            while True:
                results = {title: prom.query(expr) for title, expr in queries}
                missing = [
                    t
                    for t, res in results.items()
                    if not res or not all(math.isfinite(float(s["value"][1])) for s in res)
                ]
                if not missing or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        finally:
            stop.set()
            searcher.join(timeout=30)
        assert not missing, {t: results[t] for t in missing}

        # The numbers agree with the service's own account, summed over processes right.
        label = str(upgrade_id)
        items = f'hotrefresh_backfill_items_total{{upgrade="{label}"'
        done = prom.values(f'sum by (upgrade) ({items},status="done"}})')
        failed = prom.values(f'sum by (upgrade) ({items},status="failed"}})')
        mapped = prom.values(f'sum by (upgrade) ({items},status="mapped"}})')
        assert list(done.values()) == [N_GALLERY - 1] and list(failed.values()) == [1], (done, failed)
        assert list(mapped.values()) == [1], mapped
        progress = prom.values(f'max by (upgrade) (hotrefresh_backfill_progress_ratio{{upgrade="{label}"}})')
        # Completion sets the gauge to GET /upgrade's fraction: the mapped item counts as moved.
        assert len(progress) == 1 and list(progress.values())[0] == pytest.approx(up["fraction"])
        assert up["fraction"] == 1.0
        vectors = prom.values("max by (model) (hotrefresh_gallery_vectors)")
        assert sum(vectors.values()) == N_GALLERY, vectors  # one live vector per item, never two
        by_model = {json.loads(k)["model"]: v for k, v in vectors.items()}
        assert by_model.get("mon-new") == N_GALLERY and not by_model.get("mon-old"), by_model
        nfr = prom.values(f'max by (upgrade) (hotrefresh_live_nfr_ratio{{upgrade="{label}"}})')
        assert up["nfr"] is not None and list(nfr.values()) == [pytest.approx(up["nfr"])], (nfr, up)

        # Every alert rule evaluates cleanly on Prometheus, and every series it reads exists.
        rules = {r["name"]: r for r in prom.wait_rules_evaluated()}
        for rule in alert_rules():
            name, expr = rule["alert"], rule["expr"]
            assert rules[name]["health"] == "ok", (name, rules[name].get("lastError"))
            for sel in selectors(expr):
                assert prom.query(sel), f"{name}: {sel} has no series"
            fired = prom.query(expr)
            if name == "HotrefreshLiveNfrOverGuardrail":  # untrained models: NFR may be anywhere
                assert bool(fired) == (up["nfr"] > NFR_GUARDRAIL), (fired, up["nfr"])
            else:  # a healthy, completed upgrade with every process up
                assert fired == [], (name, fired)

        # The worker goes away: the worker-down expression turns non-empty.
        system.kill(worker)
        down = prom.wait_for(alert_expr("HotrefreshWorkerDown"))
        assert [s["metric"].get("job") for s in down] == ["hotrefresh-worker"]
        assert prom.query(alert_expr("HotrefreshApiDown")) == []


def alert_expr(name: str) -> str:
    return next(r["expr"] for r in alert_rules() if r["alert"] == name)
