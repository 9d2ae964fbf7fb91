"""Waiting for a replica (an in-process TestClient or a URL) to be ready or caught up."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from service.settings import Settings


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.05)
    raise TimeoutError("the app never became ready")


def wait_caught_up(base, settings: Settings, timeout: float = 30.0) -> dict:
    """Wait until a replica (TestClient or URL) has applied every index-log entry; its /readyz."""
    import httpx
    import redis as redis_lib

    from service import indexlog

    r = redis_lib.Redis.from_url(settings.effective_redis_url)
    get = base.get if isinstance(base, TestClient) else (lambda path: httpx.get(base + path, timeout=10))
    deadline = time.monotonic() + timeout
    try:
        while True:
            last = indexlog.stream_info(r, settings).last_id
            ready = get("/readyz")
            if ready.status_code == 200 and ready.json()["log_position"] == last:
                return ready.json()
            if time.monotonic() > deadline:
                raise TimeoutError(f"replica at {ready.text} never reached log position {last}")
            time.sleep(0.05)
    finally:
        r.close()
