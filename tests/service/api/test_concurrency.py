"""Concurrent writers on SQLite and PostgreSQL: parallel gallery inserts all land (no "database is
locked"), a race on one external id gives exactly one 201, and replicas started together
migrate one database without tripping over each other."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from service.settings import Settings
from tests.utils.images import synthetic_png
from tests.utils.wait import wait_caught_up


def _post(client: TestClient, headers: dict, ids: list[str], seed: int) -> int:
    files = [("image", (f"{i}.png", synthetic_png(seed + n), "image/png")) for n, i in enumerate(ids)]
    return client.post("/gallery", files=files, data={"external_id": ids}, headers=headers).status_code


def test_parallel_inserts_and_searches(
    client: TestClient, checkpoints: dict, admin_headers: dict, service_settings: Settings
) -> None:
    assert client.post("/models", data={"path": "old.pt"}, headers=admin_headers).status_code == 201
    jobs = [[f"w{w}-{j}-{n}" for n in range(3)] for w in range(4) for j in range(4)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        inserts = [pool.submit(_post, client, admin_headers, ids, 100 * k) for k, ids in enumerate(jobs)]
        searches = [
            pool.submit(
                lambda s: client.post(
                    "/search", files={"image": ("q.png", synthetic_png(s), "image/png")}, params={"k": 20}
                ),
                s,
            )
            for s in range(12)
        ]
        assert [f.result() for f in inserts] == [201] * len(jobs)
        for f in searches:
            hits = [h["external_id"] for h in f.result().json()["results"]]
            assert len(hits) == len(set(hits))
    ready = wait_caught_up(client, service_settings)
    assert ready["counts"] == {"old": 3 * len(jobs)}


def test_racing_inserts_of_one_external_id(
    client: TestClient, checkpoints: dict, admin_headers: dict, service_settings: Settings
) -> None:
    assert client.post("/models", data={"path": "old.pt"}, headers=admin_headers).status_code == 201
    with ThreadPoolExecutor(max_workers=4) as pool:
        codes = sorted(pool.map(lambda s: _post(client, admin_headers, ["same"], s), range(4)))
    assert codes == [201, 409, 409, 409]
    assert wait_caught_up(client, service_settings)["counts"] == {"old": 1}


def test_replicas_started_together_migrate_once(database_url: str) -> None:
    code = f"from service.db.migrate import upgrade_head; upgrade_head({database_url!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
