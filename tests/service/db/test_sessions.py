"""Read-only transactions (``read_scope``) on real SQLite and PostgreSQL: they read a committed
snapshot while a writer holds its transaction open, instead of queueing behind it, and keep
nothing they write. SQLite connections get the page cache and checkpoint interval of the
settings; a bad value is refused by name."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from service.db.migrate import upgrade_head
from service.db.schema import ModelRow
from service.db.session import get_engine, read_scope, session_scope
from service.repositories.catalog import get_serving_state
from service.settings import get_settings

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


def _pragmas(url: str) -> list[tuple[int, int]]:
    """(cache_size, wal_autocheckpoint) of a read-write and of a read-only connection."""
    out = []
    for scope in (session_scope, read_scope):
        with scope(url) as s:
            out.append(
                (
                    int(s.execute(text("PRAGMA cache_size")).scalar_one()),
                    int(s.execute(text("PRAGMA wal_autocheckpoint")).scalar_one()),
                )
            )
    return out


def test_sqlite_connections_get_the_configured_cache_and_checkpoint(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``HOTREFRESH_SQLITE_CACHE_MIB`` and ``HOTREFRESH_SQLITE_CHECKPOINT_PAGES`` reach every
    connection of both engines (cache_size in KiB, negative); unset, the defaults apply."""
    monkeypatch.delenv("HOTREFRESH_SQLITE_CACHE_MIB", raising=False)
    monkeypatch.delenv("HOTREFRESH_SQLITE_CHECKPOINT_PAGES", raising=False)
    get_settings.cache_clear()
    try:
        upgrade_head(sqlite_url)
        assert _pragmas(sqlite_url) == [(-64 * 1024, 16384)] * 2
        monkeypatch.setenv("HOTREFRESH_SQLITE_CACHE_MIB", "300")
        monkeypatch.setenv("HOTREFRESH_SQLITE_CHECKPOINT_PAGES", "5000")
        get_settings.cache_clear()
        other = f"sqlite:///{tmp_path / 'other.db'}"
        upgrade_head(other)
        assert _pragmas(other) == [(-300 * 1024, 5000)] * 2
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("HOTREFRESH_SQLITE_CACHE_MIB", "0"),
        ("HOTREFRESH_SQLITE_CACHE_MIB", "lots"),
        ("HOTREFRESH_SQLITE_CHECKPOINT_PAGES", "-1"),
    ],
)
def test_a_bad_sqlite_setting_is_refused_by_name_and_builds_no_engine(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ValidationError, match=variable.removeprefix("HOTREFRESH_").lower()):
            get_engine(sqlite_url)
        assert not Path(sqlite_url.removeprefix("sqlite:///")).exists()
        monkeypatch.delenv(variable)
        get_settings.cache_clear()
        upgrade_head(sqlite_url)  # the refusal left no engine behind: this one has the defaults
        assert _pragmas(sqlite_url) == [(-64 * 1024, 16384)] * 2
    finally:
        get_settings.cache_clear()
