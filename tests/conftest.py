"""Shared fixtures: a fresh real database (SQLite file or PostgreSQL database) per test, a
Redis key prefix per test on the real Redis, and settings built from the environment."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import create_engine, text

from service.settings import Settings, get_settings

PG_ADMIN_URL = os.environ.get("HOTREFRESH_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("HOTREFRESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_TOKEN = "test-admin-token"


def _pg_url(dbname: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


def isolated_env(tmp_path: Path, database_url: str, redis_prefix: str) -> dict[str, str]:
    """The HOTREFRESH_* variables that give one test its own database, Redis prefix and data."""
    return {
        "HOTREFRESH_ENV": "test",
        "HOTREFRESH_ADMIN_TOKEN": ADMIN_TOKEN,
        "HOTREFRESH_DATA_DIR": str(tmp_path / "data"),
        "HOTREFRESH_DATABASE_URL": database_url,
        "HOTREFRESH_REDIS_URL": REDIS_TEST_URL,
        "HOTREFRESH_REDIS_PREFIX": redis_prefix,
    }


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hotrefresh.db'}"


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL database, dropped after the test."""
    name = f"hr_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield _pg_url(name)
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
