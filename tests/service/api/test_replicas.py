"""Two real API processes (uvicorn, separate ports, one database and one Redis prefix) stay
identical — the same model per item — under a stream of changes through both of them and
through the log; a replica restarted mid-upgrade reloads exactly the same state. The gallery
is filled with `hotrefresh ingest` from real Fashion-MNIST images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis as redis_lib

from cli.launcher import System
from service.settings import Settings
from tests.utils.env import ADMIN_TOKEN
from tests.utils.images import synthetic_png
from tests.utils.wait import wait_caught_up
from tests.utils.writer import Writer, sql_truth

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def served_models(url: str, external_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    out = {}
    with httpx.Client(base_url=url, timeout=30) as c:
        for ext in external_ids:
            body = c.get(f"/gallery/{ext}").json()
            out[ext] = (body["model"], body["index_model"])
    return out


def external_ids_of(settings: Settings) -> dict[int, str]:
    from sqlalchemy import select

    from service.db.schema import GalleryItem
    from service.db.session import session_scope

    with session_scope(settings.sqlalchemy_url) as s:
        return {int(i): e for i, e in s.execute(select(GalleryItem.id, GalleryItem.external_id))}


def test_two_replicas_stay_identical_and_a_restart_reloads_the_same_state(
    service_settings: Settings, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with System(tmp_path / "system") as system:
        a = system.start_api(name="api-a")
        b = system.start_api(name="api-b")
        ca = httpx.Client(base_url=a.url, headers=auth, timeout=60)
        cb = httpx.Client(base_url=b.url, headers=auth, timeout=60)

        assert ca.post("/models", data={"path": "old.pt"}).status_code == 201
        ingest = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "ingest",
                "--fashion-mnist",
                "--split",
                "test",
                "--limit",
                "40",
                "--batch-size",
                "16",
                "--api",
                a.url,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ingest.returncode == 0, ingest.stderr[-2000:]
        assert "ingested 40 images" in ingest.stdout

        # A stream of changes: inserts and deletes through both replicas, a model switch and
        # backfill moves written to SQL and the log the way the workers write them.
        assert cb.post("/models", data={"path": "new.pt"}).status_code == 201
        r = redis_lib.Redis.from_url(service_settings.effective_redis_url)
        writer = Writer(service_settings, r)
        writer.switch("new")
        rng = np.random.default_rng(0)
        for step in range(6):
            client = ca if step % 2 else cb
            files = [("image", (f"{step}-{j}.png", synthetic_png(100 * step + j), "image/png")) for j in range(3)]
            res = client.post("/gallery", files=files, data={"external_id": [f"s{step}-{j}" for j in range(3)]})
            assert res.status_code == 201, res.text
            assert {it["model"] for it in res.json()["items"]} == {"new"}
            items, _ = sql_truth(service_settings)
            on_old = sorted(i for i, m in items.items() if m == "old")
            writer.move([int(i) for i in rng.choice(on_old, size=5, replace=False)], "new")
            victim = external_ids_of(service_settings)[int(rng.choice(sorted(items)))]
            assert (cb if step % 2 else ca).delete(f"/gallery/{victim}").status_code == 204
            # Searches on both replicas while changes land: never an id twice.
            for c in (ca, cb):
                hits = c.post(
                    "/search", files={"image": ("q.png", synthetic_png(step), "image/png")}, params={"k": 50}
                ).json()["results"]
                ids = [h["external_id"] for h in hits]
                assert len(ids) == len(set(ids))

        ready_a = wait_caught_up(a.url, service_settings)
        ready_b = wait_caught_up(b.url, service_settings)
        truth, query_model = sql_truth(service_settings)
        names = external_ids_of(service_settings)
        expected = {names[i]: (m, m) for i, m in truth.items()}
        assert set(truth.values()) == {"old", "new"}
        assert served_models(a.url, list(expected)) == expected
        assert served_models(b.url, list(expected)) == expected
        assert ready_a["counts"] == ready_b["counts"]
        assert ready_a["query_model"] == ready_b["query_model"] == query_model == "new"

        # Restart b mid-upgrade: it reloads from SQL and serves exactly the same version per item.
        system.kill(b)
        b2 = system.start_api(name="api-b2")
        ready_b2 = wait_caught_up(b2.url, service_settings)
        assert served_models(b2.url, list(expected)) == expected
        assert ready_b2["counts"] == ready_a["counts"] and ready_b2["query_model"] == "new"
        r.close()
