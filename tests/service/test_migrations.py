"""The migrations create exactly the schema of service/db/schema.py, and undo it, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from service.db.migrate import downgrade_base, upgrade_head
from service.db.schema import Base

TABLES = {"models", "serving_state", "gallery_items", "embeddings", "upgrades"} | {
    "backfill_tasks", "backfill_failures",
}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_matches_schema_then_downgrade_and_upgrade_again(database_url: str) -> None:
    upgrade_head(database_url)
    assert _tables(database_url) >= TABLES

    engine = create_engine(database_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    assert diff == [], f"migrations and schema.py disagree: {diff}"

    downgrade_base(database_url)
    assert _tables(database_url) & TABLES == set()

    upgrade_head(database_url)
    assert _tables(database_url) >= TABLES
