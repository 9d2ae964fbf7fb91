"""Read-only transactions (``read_scope``) on real SQLite and PostgreSQL: they read a committed
snapshot while a writer holds its transaction open, instead of queueing behind it, and keep
nothing they write."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text

from service.db.migrate import upgrade_head
from service.db.schema import ModelRow
from service.db.session import get_engine, read_scope, session_scope
from service.repositories.catalog import get_serving_state

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_reads_do_not_wait_for_an_open_write_transaction(database_url: str) -> None:
    upgrade_head(database_url)
    with session_scope(database_url) as s:
        get_serving_state(s)
    holding, release = threading.Event(), threading.Event()

    def writer() -> None:
        with session_scope(database_url) as s:
            s.execute(text("UPDATE serving_state SET query_model = NULL"))  # takes the write lock
            holding.set()
            release.wait(30)

    t = threading.Thread(target=writer)
    t.start()
    try:
        assert holding.wait(30)
        done = threading.Event()
        result: list[object] = []

        def reader() -> None:
            with read_scope(database_url) as s:
                result.append(s.scalars(select(ModelRow)).all())
            done.set()

        threading.Thread(target=reader, daemon=True).start()
        # The writer still holds its transaction: a read that queued behind it could not finish.
        assert done.wait(10), "a read-only transaction waited for the writer"
        assert result == [[]]
    finally:
        release.set()
        t.join(30)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_nothing_written_in_a_read_scope_is_kept(database_url: str) -> None:
    upgrade_head(database_url)
    with session_scope(database_url) as s:
        get_serving_state(s)
    with read_scope(database_url) as s:
        changed = s.execute(text("UPDATE serving_state SET query_model = 'ghost'")).rowcount
    assert changed == 1  # there was a row to change
    with read_scope(database_url) as s:
        assert s.execute(text("SELECT query_model FROM serving_state")).scalar() != "ghost"
        row = get_serving_state(s)
    assert row.query_model is None  # what was read stays usable after the scope (detached, not expired)
    assert get_engine(database_url, True) is get_engine(database_url, True)
