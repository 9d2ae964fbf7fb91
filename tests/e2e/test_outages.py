"""Infrastructure outages mid-upgrade, with servers the tests own: a PostgreSQL cluster stopped for
longer than a lease and started again with its data, and a Redis server stopped and started
again (empty: it keeps nothing on disk). Real API and Celery worker processes, Fashion-MNIST
images, searches running the whole time.

What must hold (docs/design.md, invariants 1 and 8): the upgrade completes by itself once the
server is back, every item on the new model exactly once, ``/search`` never fails, routes
that need the missing server answer 503 naming it, ``/readyz`` is 503 during the outage and 200
after, and the outage is counted in ``hotrefresh_dependency_unavailable_total``.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from cli.launcher import Proc, System, free_port
from service.db.migrate import upgrade_head
from service.db.schema import Embedding, GalleryItem, Upgrade
from service.db.session import read_scope
from service.settings import Settings, get_settings
from tests.utils.env import isolated_env
from tests.utils.servers import OwnPostgres
from tests.utils.system import ADMIN, FAST_ENV, SearchProbe, get_upgrade, ingest, logs_of, register, wait_for
from tests.workers.test_worker_processes import install_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 160


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    pg = OwnPostgres()
    pg.start()
    yield pg
    pg.remove()


def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, redis_prefix: str) -> Settings:
    for k, v in isolated_env(tmp_path, url, redis_prefix).items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    return get_settings()


def _outage_count(api: str, dependency: str) -> float:
    text = httpx.get(f"{api}/metrics", timeout=30).text
    m = re.search(rf'hotrefresh_dependency_unavailable_total{{dependency="{dependency}"}} ([0-9.e+]+)', text)
    return float(m.group(1)) if m else 0.0


def _hold_mid_way(system: System, workers: list, url: str, uid: int, at: int, logs) -> None:
    """Let the frozen workers run 50 ms at a time until ``at`` items are done (a backfill of
    this size takes seconds: polling alone would depend on the machine's speed)."""

    def signal_all(sig: int) -> None:
        for w in workers:
            os.killpg(w.popen.pid, sig)

    signal_all(signal.SIGSTOP)
    deadline = time.monotonic() + 120
    try:
        while True:
            with read_scope(url) as s:
                u = s.get(Upgrade, uid)
                state, done = (u.state, u.done) if u is not None else ("missing", 0)
            if state == "running" and done >= at:
                return
            assert state in ("scoring", "running") and done < N and time.monotonic() < deadline, (
                f"never caught the backfill mid-way: {state} {done}/{N}\n{logs()}"
            )
            signal_all(signal.SIGCONT)
            time.sleep(0.05)
            signal_all(signal.SIGSTOP)
    finally:
        signal_all(signal.SIGCONT)


@dataclass
class MidUpgrade:
    api: Proc
    new: str
    uid: int
    probe: SearchProbe
    logs: Callable[[], str]


def _upgrade_held_mid_way(
    system: System, settings: Settings, trained_pair: tuple[Path, Path], fmnist_test: tuple[np.ndarray, np.ndarray]
) -> MidUpgrade:
    """An API, a worker, a gallery of N Fashion-MNIST items, searches running, and an upgrade a
    quarter of the way through."""
    images, labels = fmnist_test[0][:N], fmnist_test[1][:N]
    old_path, new_path = install_models(settings, trained_pair)
    api = system.start_api(name="api")
    register(api.url, old_path)
    new = register(api.url, new_path)["name"]
    ext = ingest(api.url, images, labels)
    worker = system.start_worker(name="w1")
    logs = logs_of(api, worker)
    probe = SearchProbe(lambda: api.url, images, ext, k=N).start()
    res = httpx.post(f"{api.url}/upgrade", json={"model": new, "batch_size": 4}, headers=ADMIN)
    assert res.status_code == 202, res.text
    uid = res.json()["id"]
    _hold_mid_way(system, [worker], settings.sqlalchemy_url, uid, N // 4, logs)
    return MidUpgrade(api, new, uid, probe, logs)


def _completes_after_the_outage(m: MidUpgrade, settings: Settings) -> None:
    wait_for(
        lambda: httpx.get(f"{m.api.url}/readyz", timeout=30).status_code == 200, 60, "/readyz to turn 200 again", m.logs
    )
    if get_upgrade(m.api.url, m.uid)["state"] == "paused":
        httpx.post(f"{m.api.url}/upgrade/{m.uid}/resume", headers=ADMIN, timeout=30)
    final = wait_for(
        lambda: (u := get_upgrade(m.api.url, m.uid))["state"] == "completed" and u,
        240,
        "the upgrade to complete after the outage",
        m.logs,
    )
    m.probe.stop()
    assert final["done"] == N and final["failed"] == 0
    assert m.probe.errors == 0, f"{m.probe.errors} searches failed"
    assert m.probe.violations == [], m.probe.violations[:5]
    _assert_completed_once(settings.sqlalchemy_url, m.new)


def _assert_completed_once(url: str, new: str) -> None:
    with read_scope(url) as s:
        on_new = s.scalar(select(func.count()).select_from(GalleryItem).where(GalleryItem.active_model == new))
        vecs = s.scalar(select(func.count()).select_from(Embedding).where(Embedding.model == new))
    assert on_new == N and vecs == N


def test_postgresql_stopped_longer_than_a_lease_mid_upgrade(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_prefix: str,
    own_postgres: OwnPostgres,
    trained_pair: tuple[Path, Path],
    fmnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    settings = _settings(monkeypatch, tmp_path, own_postgres.url, redis_prefix)
    upgrade_head(settings.sqlalchemy_url)
    with System(tmp_path / "sys", env=dict(FAST_ENV)) as system:
        m = _upgrade_held_mid_way(system, settings, trained_pair, fmnist_test)
        api, probe = m.api, m.probe
        own_postgres.stop()
        searches_before = probe.searches
        outage_started = time.monotonic()
        r = httpx.get(f"{api.url}/upgrade/{m.uid}", timeout=30)
        assert r.status_code == 503 and "database unavailable" in r.json()["detail"], r.text
        r = httpx.get(f"{api.url}/readyz", timeout=30)
        assert r.status_code == 503 and "database" in r.json()["detail"], r.text
        r = httpx.post(
            f"{api.url}/gallery",
            files=[("image", ("x.png", b"\x89PNG", "image/png"))],
            data={"external_id": ["during-outage"]},
            headers=ADMIN,
            timeout=30,
        )
        assert r.status_code in (422, 503), r.text  # refused, never a 500
        while time.monotonic() - outage_started < 3 * float(FAST_ENV["HOTREFRESH_LEASE_SECONDS"]):
            time.sleep(0.5)  # longer than a lease: leases held when it went down expire meanwhile
        assert probe.searches > searches_before  # searches went on from the replica
        assert _outage_count(api.url, "database") >= 2

        own_postgres.start()
        _completes_after_the_outage(m, settings)


def test_redis_stopped_mid_upgrade_and_started_again(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_prefix: str,
    sqlite_url: str,
    trained_pair: tuple[Path, Path],
    fmnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    settings = _settings(monkeypatch, tmp_path, sqlite_url, redis_prefix)
    port = free_port()
    with System(tmp_path / "sys", env=dict(FAST_ENV)) as system:
        system.start_redis(port)
        redis_proc = system.procs[-1]
        m = _upgrade_held_mid_way(system, settings, trained_pair, fmnist_test)
        api, probe = m.api, m.probe
        system.kill(redis_proc, signal.SIGKILL)
        searches_before = probe.searches
        t0 = time.monotonic()
        r = httpx.get(f"{api.url}/readyz", timeout=30)
        assert r.status_code == 503 and "redis unavailable" in r.json()["detail"], r.text
        r = httpx.post(f"{api.url}/upgrade/{m.uid}/pause", headers=ADMIN, timeout=30)
        assert r.status_code in (200, 503), r.text  # SQL decides; the queue's Redis may refuse: never a 500
        if r.status_code == 200:
            assert httpx.post(f"{api.url}/upgrade/{m.uid}/resume", headers=ADMIN, timeout=30).status_code in (200, 503)
        while time.monotonic() - t0 < 3 * float(FAST_ENV["HOTREFRESH_LEASE_SECONDS"]):
            time.sleep(0.5)
        assert probe.searches > searches_before
        assert _outage_count(api.url, "redis") >= 1

        system.start_redis(port)  # the same address, empty: it keeps nothing on disk
        _completes_after_the_outage(m, settings)


def test_api_sigkilled_between_its_sql_commit_and_its_index_log_publish(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_prefix: str,
    sqlite_url: str,
    trained_pair: tuple[Path, Path],
    fmnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    """The outbox's reason to exist: a write whose SQL commit landed but whose process died before
    the Redis append. Another replica's follower relays the staged entry; every replica, running
    or started later, converges on what SQL holds."""
    settings = _settings(monkeypatch, tmp_path, sqlite_url, redis_prefix)
    images, labels = fmnist_test[0][:40], fmnist_test[1][:40]
    old_path, _ = install_models(settings, trained_pair)
    env = {**FAST_ENV, "HOTREFRESH_INDEX_LOG_RELAY_S": "0.5"}
    with System(tmp_path / "sys", env=env) as system:
        api2 = system.start_api(name="api2")
        register(api2.url, old_path)
        ingest(api2.url, images[:30], labels[:30])
        api1 = system.start_api(name="api1", extra_env={"HOTREFRESH_FAILPOINT": "before_publish"})
        logs = logs_of(api1, api2)
        from tests.utils.gallery import png

        with pytest.raises(httpx.TransportError):  # the process died mid-request
            httpx.post(
                f"{api1.url}/gallery",
                files=[("image", ("x.png", png(images[35]), "image/png"))],
                data={"external_id": ["written-then-killed"], "label": ["3"]},
                headers=ADMIN,
                timeout=30,
            )
        assert api1.popen.wait(30) is not None  # SIGKILLed, by its own failpoint
        with read_scope(settings.sqlalchemy_url) as s:  # the commit landed before the kill
            assert s.scalar(select(func.count()).select_from(GalleryItem)) == 31

        def found_on(api: str) -> bool:
            r = httpx.post(
                f"{api}/search", files={"image": ("q.png", png(images[35]), "image/png")}, params={"k": 31}, timeout=30
            )
            ids = [h["external_id"] for h in r.json()["results"]]
            return r.status_code == 200 and ids[0] == "written-then-killed" and len(ids) == len(set(ids)) == 31

        wait_for(lambda: found_on(api2.url), 60, "the surviving replica to relay and apply the entry", logs)
        relayed = re.search(r"hotrefresh_index_log_relayed_total ([0-9.e+]+)", httpx.get(f"{api2.url}/metrics").text)
        assert relayed is not None and float(relayed.group(1)) >= 1
        api3 = system.start_api(name="api3")  # a replica started afterwards loads it from SQL
        assert found_on(api3.url)
