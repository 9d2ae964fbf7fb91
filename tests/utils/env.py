"""Where the tests find the real servers, and the variables that give one test its own database,
Redis key prefix and data directory."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

# Where the PostgreSQL tests create their databases. When nothing answers there, the session
# starts a private cluster of its own instead (tests/conftest.py, ``pg_admin_url``).
PG_ADMIN_URL_SET = "HOTREFRESH_TEST_PG_ADMIN_URL" in os.environ
PG_ADMIN_URL = os.environ.get("HOTREFRESH_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS_TEST_URL = os.environ.get("HOTREFRESH_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_TOKEN = "test-admin-token"


def _pg_url(dbname: str, admin_url: str = PG_ADMIN_URL) -> str:
    return admin_url.rsplit("/", 1)[0] + "/" + dbname


def answers(url: str, timeout: float = 3.0) -> bool:
    """Whether anything accepts a TCP connection at the database URL's host and port."""
    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), timeout=timeout):
            return True
    except OSError:
        return False


def login_problem(url: str, timeout: int = 3) -> str | None:
    """None when a connection to the database URL logs in and runs a query; else why not."""
    engine = create_engine(url, connect_args={"connect_timeout": timeout})
    try:
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        return None
    except OperationalError as e:
        return str(e.orig or e).strip()
    finally:
        engine.dispose()


def isolated_env(tmp_path: Path, database_url: str, redis_prefix: str) -> dict[str, str]:
    """The HOTREFRESH_* variables that give one test its own database, Redis prefix and data."""
    return {
        "HOTREFRESH_ENV": "test",
        "HOTREFRESH_ADMIN_TOKEN": ADMIN_TOKEN,
        "HOTREFRESH_DATA_DIR": str(tmp_path / "data"),
        "HOTREFRESH_DATABASE_URL": database_url,
        "HOTREFRESH_REDIS_URL": REDIS_TEST_URL,
        "HOTREFRESH_REDIS_PREFIX": redis_prefix,
        # Redis's window of each upgrade's queue, smaller than most test galleries: every upgrade
        # in the suite (the fault tests' too) refills its window from SQL many times.
        "HOTREFRESH_QUEUE_WINDOW": "32",
    }
