"""Fixtures of the service tests: a migrated database, tiny real checkpoints in the model
directory, the app under a TestClient (its real lifespan: Redis, index load, log follower),
and real images."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient

from models.data import encode_png as png_bytes
from service.db.migrate import upgrade_head
from service.settings import Settings


@pytest.fixture
def service_settings(settings_env: Settings) -> Settings:
    """Settings of one test with the database migrated and the model directory created."""
    upgrade_head(settings_env.sqlalchemy_url)
    settings_env.models_path.mkdir(parents=True, exist_ok=True)
    return settings_env


@pytest.fixture
def checkpoints(service_settings: Settings) -> dict[str, Path]:
    """Real checkpoints in the model directory: ``old``; ``new`` (compatible with old, same D);
    ``wide`` (declares compatibility with old but has another D); ``orphan`` (compatible with a
    model that is not registered)."""
    from tests.utils.checkpoints import make_tiny_checkpoint

    root = service_settings.models_path
    specs = {
        "old": dict(seed=0),
        "new": dict(seed=1, compatible_with="old", arch="conv4", trained_with="ract"),
        "wide": dict(seed=2, compatible_with="old", embedding_dim=64),
        "orphan": dict(seed=3, compatible_with="nobody"),
    }
    out = {}
    for name, kw in specs.items():
        make_tiny_checkpoint(root / f"{name}.pt", name, **kw)
        out[name] = root / f"{name}.pt"
    return out


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


@pytest.fixture
def r(service_settings: Settings) -> Iterator[redis_lib.Redis]:
    """A client of the real Redis the service under test uses (its keys under the test's prefix)."""
    client = redis_lib.Redis.from_url(service_settings.effective_redis_url)
    yield client
    client.close()


@pytest.fixture
def client(service_settings: Settings) -> Iterator[TestClient]:
    from service.api.app import create_app

    with TestClient(create_app(service_settings)) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def fmnist() -> tuple[np.ndarray, np.ndarray]:
    """The first 400 Fashion-MNIST test images and labels (real data, read once)."""
    from models.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    return images[:400].copy(), labels[:400].copy()


def synthetic_png(seed: int, size: tuple[int, int] = (40, 32), mode: str = "RGB") -> bytes:
    """A real, decodable PIL image unlike Fashion-MNIST: random colour blocks."""
    rng = np.random.default_rng(seed)
    h, w = size
    if mode == "RGB":
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    else:
        arr = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    return png_bytes(arr)
