"""The migrations create exactly the schema of service/db/schema.py, and undo it, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, create_engine, inspect, text

from service.db.migrate import downgrade_base, upgrade_head
from service.db.schema import Base
from service.repositories import upgrades

TABLES = {"models", "serving_state", "gallery_items", "embeddings", "upgrades"} | {
    "backfill_tasks",
    "backfill_failures",
}


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _index_sql(conn: Connection, name: str) -> str:
    if conn.dialect.name == "sqlite":
        return str(conn.scalar(text("SELECT sql FROM sqlite_master WHERE name = :n"), {"n": name}))
    return str(conn.scalar(text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"), {"n": name}))


def test_upgrade_matches_schema_then_downgrade_and_upgrade_again(database_url: str) -> None:
    upgrade_head(database_url)
    assert _tables(database_url) >= TABLES

    engine = create_engine(database_url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
        pending_index = _index_sql(conn, "ix_backfill_tasks_pending")
    engine.dispose()
    # Alembic cannot compare an index with an expression (``priority DESC``): it reports the
    # pending index as removed and added. Compared here by its SQL instead.
    diff = [d for d in diff if not (d[0] in ("add_index", "remove_index") and d[1].name == "ix_backfill_tasks_pending")]
    assert diff == [], f"migrations and schema.py disagree: {diff}"
    assert "priority desc, item_id" in pending_index.lower() and "pending" in pending_index, pending_index

    downgrade_base(database_url)
    assert _tables(database_url) & TABLES == set()

    upgrade_head(database_url)
    assert _tables(database_url) >= TABLES


def test_0002_moves_a_database_with_an_upgrade_in_flight_to_the_partial_task_indexes(database_url: str) -> None:
    """A database written by 0001 (tasks pending, done and failed) upgrades in place: the
    backfill's indexes become partial, the counts read from them are the same as before, and
    the planner answers the pending count and the queue rebuild from the pending index."""
    from alembic import command
    from sqlalchemy import text

    from service.db.migrate import alembic_config
    from service.db.session import get_engine, session_scope

    command.upgrade(alembic_config(database_url), "0001")
    engine = create_engine(database_url)
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO gallery_items (id, external_id, image_key, active_model, created_at) "
                "VALUES (1,'a','k','old',CURRENT_TIMESTAMP), (2,'b','k','old',CURRENT_TIMESTAMP), "
                "(3,'c','k','new',CURRENT_TIMESTAMP), (4,'d','k','old',CURRENT_TIMESTAMP)"
            )
        )
        c.execute(
            text(
                "INSERT INTO upgrades (id, from_model, to_model, strategy, state, batch_size, total, done, "
                "failed, checkpoints, created_at, updated_at) VALUES (1,'old','new','margin','running',"
                "2,4,1,1,'[]',CURRENT_TIMESTAMP,CURRENT_TIMESTAMP)"
            )
        )
        c.execute(
            text(
                "INSERT INTO backfill_tasks (upgrade_id, item_id, priority, status, attempts, updated_at) "
                "VALUES (1,1,0.9,'pending',0,CURRENT_TIMESTAMP), (1,2,0.5,'failed',3,CURRENT_TIMESTAMP), "
                "(1,3,0.7,'done',0,CURRENT_TIMESTAMP), (1,4,0.1,'pending',1,CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()

    upgrade_head(database_url)
    get_engine.cache_clear()
    with session_scope(database_url) as s:
        assert upgrades.task_counts(s, 1) == {"pending": 2, "done": 1, "failed": 1, "mapped": 0}
        assert sorted(upgrades.pending_after(s, 1, None, 10)) == [(1, 0.9), (4, 0.1)]
        dialect = s.get_bind().dialect.name
        if dialect == "sqlite":
            definitions = dict(
                s.execute(
                    text(
                        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'backfill_tasks' "
                        "AND sql IS NOT NULL"
                    )
                ).all()
            )
            plan = " ".join(
                str(r[-1])
                for r in s.execute(
                    text(
                        "EXPLAIN QUERY PLAN SELECT count(*) FROM backfill_tasks "
                        "WHERE upgrade_id = 1 AND status = 'pending'"
                    )
                )
            )
            assert "ix_backfill_tasks_pending" in plan, plan
        else:
            definitions = dict(
                s.execute(
                    text(
                        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'backfill_tasks' "
                        "AND indexname LIKE 'ix_%'"
                    )
                ).all()
            )
    plain = create_engine(database_url)
    items_indexes = inspect(plain).get_indexes("gallery_items")
    plain.dispose()
    assert set(definitions) == {"ix_backfill_tasks_pending", "ix_backfill_tasks_finished"}, definitions
    assert "pending" in definitions["ix_backfill_tasks_pending"].split("WHERE", 1)[1]
    assert "<>" in definitions["ix_backfill_tasks_finished"].split("WHERE", 1)[1]
    assert [i["name"] for i in items_indexes if i["column_names"] == ["active_model"]] == []
    get_engine.cache_clear()


def test_0006_writes_the_final_counts_of_upgrades_that_had_finished(database_url: str) -> None:
    """A database at 0005 with a committed upgrade (its done counter off by an item deleted after
    it moved) and a running one: the committed row gets its tasks' counts, the running one none."""
    from alembic import command
    from sqlalchemy import text

    from service.db.migrate import alembic_config
    from service.db.schema import Upgrade
    from service.db.session import get_engine, session_scope

    command.upgrade(alembic_config(database_url), "0005")
    engine = create_engine(database_url)
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO gallery_items (id, external_id, image_key, active_model, created_at) VALUES "
                + ", ".join(f"({i},'e{i}','k','new',CURRENT_TIMESTAMP)" for i in range(1, 6))
            )
        )
        c.execute(
            text(
                "INSERT INTO upgrades (id, from_model, to_model, strategy, state, batch_size, total, done, "
                "failed, checkpoints, created_at, updated_at) VALUES "
                "(1,'old','new','margin','committed',2,4,3,1,'[]',CURRENT_TIMESTAMP,CURRENT_TIMESTAMP), "
                "(2,'new','newer','margin','running',2,5,1,0,'[]',CURRENT_TIMESTAMP,CURRENT_TIMESTAMP)"
            )
        )
        c.execute(
            text(
                "INSERT INTO backfill_tasks (upgrade_id, item_id, priority, status, attempts, updated_at) VALUES "
                "(1,1,0.9,'done',0,CURRENT_TIMESTAMP), (1,2,0.5,'done',0,CURRENT_TIMESTAMP), "
                "(1,3,0.7,'failed',3,CURRENT_TIMESTAMP), "
                "(2,1,0.9,'done',0,CURRENT_TIMESTAMP), (2,2,0.5,'pending',0,CURRENT_TIMESTAMP)"
            )
        )
    engine.dispose()

    upgrade_head(database_url)
    get_engine.cache_clear()
    with session_scope(database_url) as s:
        done = s.get(Upgrade, 1)
        running = s.get(Upgrade, 2)
        assert done is not None and running is not None
        assert (done.pending_at_end, done.done, done.failed) == (0, 2, 1)
        assert upgrades.counts_of(s, done) == {"pending": 0, "done": 2, "failed": 1, "mapped": 0}
        assert (running.pending_at_end, running.done) == (None, 1)  # still counted live
        assert upgrades.counts_of(s, running) == {"pending": 1, "done": 1, "failed": 0, "mapped": 0}
    get_engine.cache_clear()
