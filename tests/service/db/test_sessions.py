"""Read-only transactions (``read_scope``) on real SQLite and PostgreSQL: they read a committed
snapshot while a writer holds its transaction open, instead of queueing behind it, and keep
nothing they write."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

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
def test_a_write_inside_a_read_scope_fails(database_url: str) -> None:
    """``read_scope`` is read-only on both databases: SQLite's connection is ``query_only``,
    PostgreSQL's transaction is ``READ ONLY``; the write fails where it is made."""
    upgrade_head(database_url)
    with session_scope(database_url) as s:
        get_serving_state(s)
    with pytest.raises(DBAPIError) as caught, read_scope(database_url) as s:
        s.execute(text("UPDATE serving_state SET query_model = 'ghost'"))
    message = str(caught.value.orig).lower()
    assert "read-only" in message or "readonly" in message, message
    with read_scope(database_url) as s:
        assert s.execute(text("SELECT query_model FROM serving_state")).scalar() != "ghost"
        row = get_serving_state(s)
    assert row.query_model is None  # what was read stays usable after the scope (detached, not expired)
    assert get_engine(database_url, True) is get_engine(database_url, True)


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_the_read_only_flag_does_not_leak_into_write_sessions(database_url: str) -> None:
    """Both kinds of session share PostgreSQL's pool: a connection returned by a read must come
    back writable, and the same for SQLite's separate engines."""
    upgrade_head(database_url)
    with session_scope(database_url) as s:
        get_serving_state(s)
    for _ in range(3):  # more rounds than the pool needs to hand the same connection back
        with read_scope(database_url) as s:
            s.execute(text("SELECT 1"))
        with session_scope(database_url) as s:
            assert s.execute(text("UPDATE serving_state SET query_model = 'kept'")).rowcount == 1
    with read_scope(database_url) as s:
        assert s.execute(text("SELECT query_model FROM serving_state")).scalar() == "kept"
