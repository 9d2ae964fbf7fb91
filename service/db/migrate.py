"""Bring a database to the newest schema with Alembic, from code (``serve``, the demo, tests).

Always migrations, never ``metadata.create_all``: a database created by one must be
upgradeable by the other, so there is exactly one way a schema comes to exist.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    cfg = Config(str(_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(_ROOT / "migrations"))
    # ConfigParser interpolation: a '%' in a password must be doubled.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    # The caller (uvicorn, pytest) owns logging; don't let alembic.ini reconfigure it.
    cfg.attributes["configure_logging"] = False
    return cfg


# Any constant shared by every process migrating the same PostgreSQL database.
_PG_LOCK_KEY = 0x686F7472  # "hotr"


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    """Serialise migrations of one database across processes: replicas started together must
    not both try to create the same tables. PostgreSQL: an advisory lock; SQLite: a lock file."""
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".migrate.lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    elif url.startswith("postgresql"):
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
        finally:
            engine.dispose()
    else:
        yield


def upgrade_head(url: str) -> None:
    with _migration_lock(url):
        command.upgrade(alembic_config(url), "head")


def downgrade_base(url: str) -> None:
    command.downgrade(alembic_config(url), "base")
