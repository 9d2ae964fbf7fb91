"""Shared fixtures: a fresh real database (SQLite file or PostgreSQL database) per test, a
Redis key prefix per test on the real Redis, and settings built from the environment."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

from service.db.migrate import upgrade_head
from service.settings import Settings, get_settings
from tests.utils.env import (
    ADMIN_TOKEN,
    PG_ADMIN_URL,
    PG_ADMIN_URL_SET,
    REDIS_TEST_URL,
    _pg_url,
    answers,
    isolated_env,
    login_problem,
)
from tests.utils.gallery import Gallery, build_gallery, cached_tiny_pair
from tests.utils.servers import OwnMilvus, OwnPostgres, OwnSeaweed
from tests.utils.wait import wait_ready


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hotrefresh.db'}"


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """The PostgreSQL server the tests create their databases on: ``HOTREFRESH_TEST_PG_ADMIN_URL``
    (default 127.0.0.1:5432, database ``test``) when it logs in there; otherwise a private cluster
    of this session's own (``OwnPostgres``: initdb in a temporary folder, a free port), started at
    the first PostgreSQL test and removed at the end, so ``make test`` needs only the PostgreSQL
    binaries, which the Makefile's setup installs. A URL set in the variable that answers but
    refuses the login is a configuration error, reported as such rather than replaced."""
    problem = login_problem(PG_ADMIN_URL)
    if problem is None:
        yield PG_ADMIN_URL
        return
    if PG_ADMIN_URL_SET and answers(PG_ADMIN_URL):
        raise RuntimeError(f"HOTREFRESH_TEST_PG_ADMIN_URL={PG_ADMIN_URL} answers but cannot be used: {problem}")
    server = OwnPostgres()
    try:
        server.start()
        server.wait_accepting()
        reason = (problem.splitlines() or ["no answer"])[0]
        warnings.warn(f"no PostgreSQL at {PG_ADMIN_URL} ({reason}): a private cluster at {server.url}", stacklevel=1)
        yield server.url
    finally:
        server.remove()


@pytest.fixture
def postgres_url(pg_admin_url: str) -> Iterator[str]:
    """A throw-away PostgreSQL database, dropped after the test."""
    name = f"hr_{uuid.uuid4().hex[:12]}"
    admin = create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url(name, pg_admin_url)
    finally:
        from service.db.session import get_engine

        get_engine.cache_clear()
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Runs the test once on SQLite and once on PostgreSQL."""
    return request.getfixturevalue({"sqlite": "sqlite_url", "postgresql": "postgres_url"}[request.param])


@pytest.fixture(scope="session")
def milvus_server() -> Iterator[OwnMilvus]:
    """A real Milvus standalone for the whole session (started on first use, about 3-10 s)."""
    server = OwnMilvus()
    server.start()
    yield server
    server.remove()


@pytest.fixture(scope="session")
def seaweed_server() -> Iterator[OwnSeaweed]:
    """A real SeaweedFS S3 gateway for the whole session (started on first use, about 4 s). A test
    that stops it starts it again before it ends; each test uses its own prefix in the bucket."""
    server = OwnSeaweed()
    server.start()
    yield server
    server.remove()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    prefix = f"hrtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    r = redis_lib.Redis.from_url(REDIS_TEST_URL)
    keys = list(r.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture
def redis_client() -> Iterator[redis_lib.Redis]:
    r = redis_lib.Redis.from_url(REDIS_TEST_URL)
    yield r
    r.close()


@pytest.fixture
def settings_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str, redis_prefix: str
) -> Iterator[Settings]:
    """Settings for one test: its own database, Redis prefix and data directory, via the env
    (so subprocesses started by the test see the same configuration)."""
    env = isolated_env(tmp_path, database_url, redis_prefix)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# --- galleries and models (service/upgrade, service/api and workers tests) ---------------------


@pytest.fixture(scope="session")
def fmnist_test() -> tuple[np.ndarray, np.ndarray]:
    from models.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    return images[:600].copy(), labels[:600].copy()


@pytest.fixture(scope="session")
def trained_pair() -> tuple[Path, Path]:
    """A small old model and a RACT-compatible new one (trained once; seconds)."""
    return cached_tiny_pair()


@pytest.fixture
def tiny_checkpoints(settings_env: Settings) -> tuple[Path, Path]:
    """Untrained but real checkpoints: ``old`` (conv2) and ``new`` (conv4, compatible with old)."""
    from tests.utils.checkpoints import make_tiny_checkpoint

    root = settings_env.models_path
    root.mkdir(parents=True, exist_ok=True)
    make_tiny_checkpoint(root / "old.pt", "old", seed=0)
    make_tiny_checkpoint(root / "new.pt", "new", seed=1, arch="conv4", compatible_with="old", trained_with="ract")
    return root / "old.pt", root / "new.pt"


@pytest.fixture
def make_gallery(
    settings_env: Settings, tiny_checkpoints: tuple[Path, Path], fmnist_test: tuple[np.ndarray, np.ndarray]
) -> Callable[..., Gallery]:
    def make(n: int = 80, corrupt: int = 0, labeled: bool = True) -> Gallery:
        images, labels = fmnist_test
        return build_gallery(
            settings_env, images[:n], labels[:n] if labeled else None, *tiny_checkpoints, corrupt=corrupt
        )

    return make


# --- the service: a migrated database, checkpoints, the app, Redis -------------------------------


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
    # bring-your-own encoders that registration must refuse: a wrong output size, no metadata
    from tests.utils.encoders import save_user_encoder

    save_user_encoder(root / "user-bad.pt", "user-bad", dim=16, bad="dim")
    save_user_encoder(root / "user-nometa.pt", "user-nometa", sidecar=False)
    return out


@pytest.fixture
def r(service_settings: Settings, redis_client: redis_lib.Redis) -> redis_lib.Redis:
    """The real Redis the service under test uses (its keys under the test's prefix), migrated DB."""
    return redis_client


@pytest.fixture
def client(service_settings: Settings) -> Iterator[TestClient]:
    from service.api.app import create_app

    with TestClient(create_app(service_settings)) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="session")
def fmnist(fmnist_test: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The first 400 Fashion-MNIST test images and labels (of the one read in tests/conftest.py)."""
    return fmnist_test[0][:400], fmnist_test[1][:400]
