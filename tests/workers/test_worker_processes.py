"""Fault tests with real processes: API replicas under uvicorn and Celery worker processes
started by ``cli.launcher``, the real Redis (or an embedded one we may flush), SQLite and
PostgreSQL, real Fashion-MNIST images and a RACT-trained tiny model pair."""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis as redis_lib
from sqlalchemy import func, select

from cli.launcher import System
from service import keys
from service.db.schema import BackfillTask, Embedding, GalleryItem, Upgrade
from service.db.session import read_scope, session_scope
from service.settings import Settings
from tests.utils.system import (
    ADMIN,
    FAST_ENV,
    SearchProbe,
    get_upgrade,
    ingest,
    logs_of,
    register,
    search,
    wait_for,
)
from tests.utils.wait import wait_caught_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def install_models(settings: Settings, pair: tuple[Path, Path]) -> tuple[Path, Path]:
    settings.models_path.mkdir(parents=True, exist_ok=True)
    out = []
    for p in pair:
        dst = settings.models_path / p.name
        shutil.copy(p, dst)
        out.append(dst)
    return out[0], out[1]


def sql_models(settings: Settings) -> dict[str, str]:
    with session_scope(settings.sqlalchemy_url) as s:
        return dict(s.execute(select(GalleryItem.external_id, GalleryItem.active_model)).all())


def served_models(api: str, image: np.ndarray, n: int) -> dict[str, str]:
    """Which model's vector this replica serves for each item: with k = the gallery size, one
    search returns every live item once, with the segment it was found in."""
    hits = search(api, image, n)["results"]
    out = {h["external_id"]: h["model"] for h in hits}
    assert len(out) == len(hits) == n
    return out


def assert_every_item_on_new_exactly_once(settings: Settings, new: str, n: int, mapped: int = 0) -> None:
    """Every item on the new model with one vector of it; ``mapped`` of them mapped, the rest encoded."""
    with session_scope(settings.sqlalchemy_url) as s:
        on_new = s.scalar(select(func.count()).select_from(GalleryItem).where(GalleryItem.active_model == new))
        new_vecs = s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model == new))
        n_mapped = s.scalar(
            select(func.count()).select_from(Embedding).where(Embedding.model == new, Embedding.mapped.is_(True))
        )
        done = s.scalar(select(func.count()).select_from(BackfillTask).where(BackfillTask.status == "done"))
    assert on_new == n and new_vecs == n and done == n - mapped and n_mapped == mapped


def test_sigkill_workers_mid_batch_and_restart_api_mid_upgrade(
    settings_env: Settings,
    trained_pair: tuple[Path, Path],
    fmnist_test: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    n = 240
    t0 = time.monotonic()

    def step(what: str) -> None:
        print(f"[{time.monotonic() - t0:6.1f}s] {what}", flush=True)

    images, labels = fmnist_test[0][:n], fmnist_test[1][:n]
    old_path, new_path = install_models(settings_env, trained_pair)
    r = redis_lib.Redis.from_url(settings_env.effective_redis_url)
    with System(tmp_path / "sys", env=dict(FAST_ENV)) as system:
        api = system.start_api(name="api")
        current = {"api": api}
        step("api up")
        old = register(api.url, old_path)["name"]
        new = register(api.url, new_path)["name"]
        ext = ingest(api.url, images, labels)
        step("ingested")
        w1 = system.start_worker(name="w1")
        w2 = system.start_worker(name="w2")
        step("workers up")
        logs = logs_of(api, w1, w2)
        probe = SearchProbe(lambda: current["api"].url, images, ext, k=n).start()

        resp = httpx.post(
            f"{api.url}/upgrade", json={"model": new, "strategy": "margin", "batch_size": 4}, headers=ADMIN
        )
        assert resp.status_code == 202, resp.text
        uid = resp.json()["id"]
        leases_key = keys.leases(settings_env, uid)

        # SIGKILL both workers while they hold leases, a fifth of the way in. The workers are
        # frozen (SIGSTOP) and let run 50 ms at a time until that point is reached: a backfill of
        # this size takes about two seconds, so catching it mid-way by polling alone depends on
        # the machine's speed. Only Redis and read-only SQL snapshots are read while they are
        # frozen (one of them may hold SQLite's write lock).
        def upgrade_row() -> tuple[str, int]:
            with read_scope(settings_env.sqlalchemy_url) as s:
                u = s.get(Upgrade, uid)
                return u.state, u.done

        def signal_workers(sig: int) -> None:
            for w in (w1, w2):
                os.killpg(w.popen.pid, sig)

        signal_workers(signal.SIGSTOP)
        deadline = time.monotonic() + 120
        while True:
            state, done = upgrade_row()
            if state == "running" and done >= n // 5 and r.zcard(leases_key) > 0:
                break
            assert state in ("scoring", "running") and done < n * 4 // 5 and time.monotonic() < deadline, (
                f"never caught the backfill mid-way: {state}, {done}/{n}\n{logs()}"
            )
            signal_workers(signal.SIGCONT)
            time.sleep(0.05)
            signal_workers(signal.SIGSTOP)
        step("mid batch")
        system.kill(w1, signal.SIGKILL)
        system.kill(w2, signal.SIGKILL)
        orphaned = r.zcard(leases_key)
        done_at_kill = get_upgrade(api.url, uid)["done"]
        assert orphaned > 0 and done_at_kill < n

        # pause, then restart the API: the new process serves exactly the same model per item
        assert httpx.post(f"{api.url}/upgrade/{uid}/pause", headers=ADMIN).json()["state"] == "paused"
        probe.pause()
        wait_caught_up(api.url, settings_env)  # the replica has applied every index-log entry
        step("paused")
        before = served_models(api.url, images[0], n)
        assert before == sql_models(settings_env)
        assert set(before.values()) == {old, new}  # really mid-upgrade
        system.kill(api, signal.SIGTERM)
        api = system.start_api(name="api2")
        current["api"] = api
        step("api restarted")
        after = served_models(api.url, images[0], n)
        assert after == before
        probe.resume()

        # a fresh worker takes over: orphaned leases expire and come back, the chains restart
        assert httpx.post(f"{api.url}/upgrade/{uid}/resume", headers=ADMIN).status_code == 200
        step("resumed")
        w3 = system.start_worker(name="w3")
        logs = logs_of(api, w3)
        final = wait_for(
            lambda: (u := get_upgrade(api.url, uid))["state"] == "completed" and u, 180, "the upgrade to complete", logs
        )
        step("completed")
        wait_caught_up(api.url, settings_env)  # the replica has applied the last moves
        probe.stop()
        assert final["done"] == n and final["failed"] == 0 and final["fraction"] == 1.0
        assert probe.searches > 20 and probe.violations == [], probe.violations[:5]
        assert_every_item_on_new_exactly_once(settings_env, new, n)
        assert set(served_models(api.url, images[0], n).values()) == {new}


def test_redis_flushed_mid_upgrade_and_corrupt_images(
    settings_env: Settings,
    trained_pair: tuple[Path, Path],
    fmnist_test: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
) -> None:
    n, corrupt = 200, 4
    images, labels = fmnist_test[0][:n], fmnist_test[1][:n]
    old_path, new_path = install_models(settings_env, trained_pair)
    with System(tmp_path / "sys", env=dict(FAST_ENV)) as system:
        redis_url = system.start_redis()  # our own Redis: flushing it touches nobody else
        r = redis_lib.Redis.from_url(redis_url)
        api = system.start_api(name="api")
        register(api.url, old_path)
        new = register(api.url, new_path)["name"]
        ext = ingest(api.url, images, labels)
        # corrupt a few stored images on disk (the API refuses corrupt uploads)
        with session_scope(settings_env.sqlalchemy_url) as s:
            keys = [s.scalar(select(GalleryItem.image_key).where(GalleryItem.external_id == e)) for e in ext[:corrupt]]
        from service.imagestore import LocalImageStore

        for key in keys:
            LocalImageStore(settings_env.images_path).path_for(key).write_bytes(b"\x89PNG truncated garbage")
        w = system.start_worker(name="w1")
        logs = logs_of(api, w)
        resp = httpx.post(
            f"{api.url}/upgrade", json={"model": new, "strategy": "least", "batch_size": 4}, headers=ADMIN
        )
        assert resp.status_code == 202, resp.text
        uid = resp.json()["id"]
        wait_for(lambda: get_upgrade(api.url, uid)["done"] >= n // 4, 120, "a quarter done", logs)
        # Redis restarted empty: queue, leases, index log and Celery's messages gone. (Not followed
        # by a check that Redis is empty: the running worker writes its heartbeat and leases
        # again within microseconds, which once failed this test on a check of the test's own.)
        assert r.flushall()
        final = wait_for(
            lambda: (u := get_upgrade(api.url, uid))["state"] == "completed" and u,
            180,
            "the upgrade to complete after the flush",
            logs,
        )
        # the corrupt items failed, then got mapped vectors at the end: none is left behind
        assert final["done"] == n - corrupt and final["mapped"] == corrupt and final["failed"] == 0
        assert sorted(f["external_id"] for f in final["failures"]) == sorted(ext[:corrupt])
        failures = httpx.get(f"{api.url}/upgrade/{uid}/failures").json()
        assert len(failures) == corrupt and all(f["attempts"] == 3 for f in failures)
        assert_every_item_on_new_exactly_once(settings_env, new, n, mapped=corrupt)
        # the replica reloaded from SQL after losing the log: it serves what SQL says
        wait_for(
            lambda: served_models(api.url, images[0], n) == sql_models(settings_env),
            60,
            "the replica to serve what SQL holds",
            logs,
        )
