"""Helpers of the tests that run the real thing: API processes, Celery worker processes, HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from cli.launcher import Proc
from tests.utils.gallery import png

ADMIN = {"Authorization": "Bearer test-admin-token"}

# Short leases and drain budgets so a killed worker's items come back within seconds.
FAST_ENV = {
    "HOTREFRESH_LEASE_SECONDS": "3",
    "HOTREFRESH_DRAIN_BUDGET_SECONDS": "2",
    "HOTREFRESH_DRAIN_CHAINS": "4",
    "HOTREFRESH_VISIBILITY_TIMEOUT_SECONDS": "30",
    "HOTREFRESH_INDEX_LOG_POLL_MS": "50",
    "HOTREFRESH_DEVICE": "cpu",
}


def register(api: str, path: Path) -> dict:
    r = httpx.post(f"{api}/models", data={"path": str(path)}, headers=ADMIN, timeout=60)
    assert r.status_code == 201, r.text
    return r.json()


def ingest(api: str, images: np.ndarray, labels: np.ndarray | None, prefix: str = "img", batch: int = 64) -> list[str]:
    ext_ids: list[str] = []
    for start in range(0, len(images), batch):
        files = []
        data: dict[str, list[str]] = {"external_id": [], "label": []}
        for k in range(start, min(start + batch, len(images))):
            files.append(("image", (f"{k}.png", png(images[k]), "image/png")))
            data["external_id"].append(f"{prefix}-{k}")
            if labels is not None:
                data["label"].append(str(int(labels[k])))
        if labels is None:
            del data["label"]
        r = httpx.post(f"{api}/gallery", files=files, data=data, headers=ADMIN, timeout=120)
        assert r.status_code == 201, r.text
        ext_ids.extend(data["external_id"])
    return ext_ids


def get_upgrade(api: str, upgrade_id: int | None = None) -> dict:
    r = httpx.get(f"{api}/upgrade" + (f"/{upgrade_id}" if upgrade_id else ""), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def wait_for(predicate: Callable[[], object], timeout: float, what: str, logs: Callable[[], str] = str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{logs()}")


def search(api: str, image: np.ndarray, k: int) -> dict:
    r = httpx.post(f"{api}/search", files={"image": ("q.png", png(image), "image/png")}, params={"k": k}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


@dataclass
class SearchProbe:
    """Searches with gallery items' own images in a loop, recording every violation of
    invariant 1: the item not found, or an external id twice in one result."""

    api: Callable[[], str]
    images: np.ndarray
    ext_ids: list[str]
    k: int
    searches: int = 0
    violations: list[str] = field(default_factory=list)
    errors: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _paused: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> SearchProbe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def pause(self) -> None:
        self._paused.set()
        time.sleep(0.5)

    def resume(self) -> None:
        self._paused.clear()

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self._stop.is_set():
            if self._paused.is_set():
                time.sleep(0.05)
                continue
            i = int(rng.integers(len(self.ext_ids)))
            try:
                res = search(self.api(), self.images[i], self.k)
            except (httpx.HTTPError, AssertionError):
                self.errors += 1  # only while an API process is being restarted (paused then)
                time.sleep(0.1)
                continue
            ids = [h["external_id"] for h in res["results"]]
            self.searches += 1
            if self.ext_ids[i] not in ids:
                self.violations.append(f"{self.ext_ids[i]} not found by its own image")
            if len(ids) != len(set(ids)):
                self.violations.append(f"duplicate ids in the result for {self.ext_ids[i]}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)


def logs_of(*procs: Proc) -> Callable[[], str]:
    return lambda: "\n".join(f"--- {p.name} ---\n{p.log_tail(60)}" for p in procs)
