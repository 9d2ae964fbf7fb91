"""Where the tests find the real servers, and the variables that give one test its own database,
Redis key prefix and data directory."""

from __future__ import annotations

import os
from pathlib import Path

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
        # Redis's window of each upgrade's queue, smaller than most test galleries: every upgrade
        # in the suite (the fault tests' too) refills its window from SQL many times.
        "HOTREFRESH_QUEUE_WINDOW": "32",
    }
