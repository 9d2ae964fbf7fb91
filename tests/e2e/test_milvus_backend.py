"""The Milvus backend end to end (issue 24), with a real Milvus standalone, real API and Celery
worker processes and Fashion-MNIST images: an upgrade over HTTP, searches running the whole time;
mid-way, an in-process API started on the same SQL returns the same top-k (exact index on both
sides); rollback is a switch; a second upgrade completes and commits, dropping the old
collection; ``hotrefresh index rebuild`` brings back a Milvus emptied by hand. Then the fault:
Milvus SIGKILLed and started again mid-upgrade, searches 503 naming Milvus while it is down,
the upgrade completes, every item on the new model exactly once.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from typer.testing import CliRunner

from cli.launcher import Proc, System
from cli.main import app
from service.index.milvus import MilvusConfig, MilvusSpaces
from service.settings import Settings, get_settings
from tests.e2e.test_outages import N, _assert_completed_once, _hold_mid_way, _settings
from tests.utils.servers import OwnMilvus
from tests.utils.system import (
    ADMIN,
    FAST_ENV,
    SearchProbe,
    get_upgrade,
    ingest,
    logs_of,
    png,
    register,
    search,
    wait_for,
)
from tests.workers.test_worker_processes import install_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _milvus_env(server: OwnMilvus) -> dict[str, str]:
    return {
        "HOTREFRESH_INDEX_BACKEND": "milvus",
        "HOTREFRESH_MILVUS_URI": server.uri,
        "HOTREFRESH_MILVUS_PREFIX": f"t{uuid.uuid4().hex[:12]}",
        "HOTREFRESH_MILVUS_INDEX_TYPE": "FLAT",  # exact: the top-k equals brute force
        "HOTREFRESH_MILVUS_INDEX_PARAMS": "{}",
        "HOTREFRESH_MILVUS_SEARCH_PARAMS": "{}",
        "HOTREFRESH_INDEX_LOG_RELAY_S": "1",
    }


@pytest.fixture
def own_milvus() -> Iterator[OwnMilvus]:
    server = OwnMilvus()
    server.start()
    yield server
    server.remove()


def _spaces(settings: Settings) -> MilvusSpaces:
    return MilvusSpaces(MilvusConfig(uri=settings.milvus_uri, prefix=settings.milvus_prefix, index_type="FLAT"))


def _live(spaces: MilvusSpaces, old: str, new: str, upgrade: int | None) -> tuple[set[int], set[int]]:
    """The ids a search of each space can return now (the old one as during ``upgrade``)."""
    return set(spaces.all_ids(old, hide_moved_by=upgrade)), set(spaces.all_ids(new))


def _start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str, redis_prefix: str, server: OwnMilvus
) -> tuple[Settings, dict[str, str]]:
    env = _milvus_env(server)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    settings = _settings(monkeypatch, tmp_path, sqlite_url, redis_prefix)
    return settings, env


def _gallery(
    system: System, settings: Settings, trained_pair: tuple[Path, Path], images: np.ndarray, labels: np.ndarray
) -> tuple[Proc, Proc, str, str, list[str]]:
    """An API and a worker on Milvus, both models registered, the gallery ingested on the old one:
    (api, worker, old model, new model, external ids)."""
    old_path, new_path = install_models(settings, trained_pair)
    api = system.start_api(name="api")
    old = register(api.url, old_path)["name"]
    new = register(api.url, new_path)["name"]
    ext = ingest(api.url, images, labels)
    return api, system.start_worker(name="w1"), old, new, ext


def _same_top_k(a: dict, b: dict) -> None:
    """The same ranking from two backends: ids in the same order where scores differ by more
    than float noise, and the same scores."""
    sa = np.array([h["score"] for h in a["results"]])
    sb = np.array([h["score"] for h in b["results"]])
    assert np.allclose(sa, sb, atol=1e-4), (sa[:5], sb[:5])
    ids_a = [h["external_id"] for h in a["results"]]
    ids_b = [h["external_id"] for h in b["results"]]
    for i, (x, y) in enumerate(zip(ids_a, ids_b, strict=True)):
        if x != y:  # only a tie may swap two neighbours
            assert np.isclose(sa[i], sb[ids_b.index(x)], atol=1e-4), (i, x, y)
    assert [h["model"] for h in a["results"]] == [h["model"] for h in b["results"]] or set(ids_a) == set(ids_b)


def test_upgrade_rollback_upgrade_commit_and_rebuild_on_milvus(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_prefix: str,
    sqlite_url: str,
    milvus_server: OwnMilvus,
    trained_pair: tuple[Path, Path],
    fmnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    settings, env = _start(monkeypatch, tmp_path, sqlite_url, redis_prefix, milvus_server)
    spaces = _spaces(settings)
    images, labels = fmnist_test[0][:N], fmnist_test[1][:N]
    with System(tmp_path / "sys", env={**FAST_ENV, **env}) as system:
        api, worker, old, new, ext = _gallery(system, settings, trained_pair, images, labels)
        logs = logs_of(api, worker)
        ready = wait_for(
            lambda: (r := httpx.get(f"{api.url}/readyz", timeout=30).json())["counts"] == {old: N} and r,
            30,
            "/readyz to count the gallery",
            logs,
        )
        assert ready["loaded_from"] == "milvus", ready
        probe = SearchProbe(lambda: api.url, images, ext, k=N).start()

        # An upgrade under the dual plan (two query embeddings, one search per collection).
        res = httpx.post(f"{api.url}/upgrade", json={"model": new, "batch_size": 4, "plan": "dual"}, headers=ADMIN)
        assert res.status_code == 202, res.text
        uid = res.json()["id"]
        _hold_mid_way(system, [worker], settings.sqlalchemy_url, uid, N // 3, logs)
        # Paused: the worker lands what it holds and stops, so every move has both its writes.
        assert httpx.post(f"{api.url}/upgrade/{uid}/pause", headers=ADMIN, timeout=30).status_code == 200
        wait_for(lambda: get_upgrade(api.url, uid)["state"] == "paused", 60, "the pause", logs)
        spaces_settled = wait_for(
            lambda: (lv := _live(spaces, old, new, uid))[0].isdisjoint(lv[1]) and lv, 60, "moves to settle", logs
        )
        live_old, live_new = spaces_settled
        assert len(live_old | live_new) == N and live_new, (len(live_old), len(live_new))
        # The same SQL, served in-process: the same top-k as from Milvus.
        flat = system.start_api(name="flat", extra_env={"HOTREFRESH_INDEX_BACKEND": "flat"})
        for i in range(0, N, 16):
            _same_top_k(search(api.url, images[i], 20), search(flat.url, images[i], 20))
        system.kill(flat, signal.SIGTERM)
        assert httpx.post(f"{api.url}/upgrade/{uid}/resume", headers=ADMIN, timeout=30).status_code == 200
        wait_for(lambda: get_upgrade(api.url, uid)["state"] == "completed", 240, "the first upgrade", logs)
        live_old, live_new = _live(spaces, old, new, uid)
        assert live_new == set(range(min(live_new), min(live_new) + N)) and not live_old

        # Rollback: a switch. Nothing is written back; the old rows are live again at once.
        assert httpx.post(f"{api.url}/upgrade/{uid}/rollback", headers=ADMIN, timeout=30).status_code == 200
        hits = search(api.url, images[0], N)["results"]
        assert {h["model"] for h in hits} == {old} and len({h["external_id"] for h in hits}) == N
        wait_for(lambda: not spaces.exists(new), 30, "the new model's collection to go", logs)
        assert len(spaces.all_ids(old)) == N

        # A second upgrade, completed and committed: the old collection is dropped.
        res = httpx.post(f"{api.url}/upgrade", json={"model": new, "batch_size": 8}, headers=ADMIN)
        assert res.status_code == 202, res.text
        uid2 = res.json()["id"]
        wait_for(lambda: get_upgrade(api.url, uid2)["state"] == "completed", 240, "the second upgrade", logs)
        assert httpx.post(f"{api.url}/upgrade/{uid2}/commit", headers=ADMIN, timeout=30).status_code == 200
        wait_for(lambda: not spaces.exists(old), 30, "the old model's collection to go", logs)
        assert len(spaces.all_ids(new)) == N
        probe.stop()
        assert probe.errors == 0 and probe.violations == [], (probe.errors, probe.violations[:5])
        assert probe.searches > 0

        # Milvus emptied by hand: searches find nothing until the rebuild, then everything.
        spaces.drop(new)
        assert search(api.url, images[0], 10)["results"] == []
        result = CliRunner().invoke(app, ["index", "rebuild", "--chunk", "50"])
        assert result.exit_code == 0, result.output
        assert f"rebuilt {N} items" in result.output
        hits = search(api.url, images[3], N)["results"]
        assert len(hits) == N and hits[0]["external_id"] == ext[3] and {h["model"] for h in hits} == {new}
    get_settings.cache_clear()


def test_milvus_sigkilled_mid_upgrade_and_started_again(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_prefix: str,
    sqlite_url: str,
    own_milvus: OwnMilvus,
    trained_pair: tuple[Path, Path],
    fmnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    settings, env = _start(monkeypatch, tmp_path, sqlite_url, redis_prefix, own_milvus)
    images, labels = fmnist_test[0][:N], fmnist_test[1][:N]
    with System(tmp_path / "sys", env={**FAST_ENV, **env}) as system:
        api, worker, old, new, ext = _gallery(system, settings, trained_pair, images, labels)
        logs = logs_of(api, worker)
        res = httpx.post(f"{api.url}/upgrade", json={"model": new, "batch_size": 4}, headers=ADMIN)
        assert res.status_code == 202, res.text
        uid = res.json()["id"]
        _hold_mid_way(system, [worker], settings.sqlalchemy_url, uid, N // 4, logs)

        own_milvus.kill()
        t0 = time.monotonic()
        r = httpx.post(f"{api.url}/search", files={"image": ("q.png", png(images[0]), "image/png")}, timeout=60)
        assert r.status_code == 503 and "milvus unavailable" in r.json()["detail"], r.text
        r = httpx.get(f"{api.url}/readyz", timeout=60)
        assert r.status_code == 503 and "milvus" in r.json()["detail"], r.text
        while time.monotonic() - t0 < 3 * float(FAST_ENV["HOTREFRESH_LEASE_SECONDS"]):
            time.sleep(0.5)  # the worker's batches fail to publish meanwhile: their leases expire

        own_milvus.start()
        final = wait_for(
            lambda: (u := get_upgrade(api.url, uid))["state"] == "completed" and u, 300, "completion", logs
        )
        assert final["done"] == N and final["failed"] == 0
        _assert_completed_once(settings.sqlalchemy_url, new)
        live_old, live_new = _live(_spaces(settings), old, new, uid)
        assert len(live_new) == N and not live_old  # each item once, on the new model
        probe = SearchProbe(lambda: api.url, images, ext, k=N).start()
        wait_for(lambda: probe.searches >= 20, 120, "searches after the restart", logs)
        probe.stop()
        assert probe.errors == 0 and probe.violations == [], (probe.errors, probe.violations[:5])
    get_settings.cache_clear()
