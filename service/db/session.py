"""Engines and sessions, built per database URL on first use (never at import time)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.settings import Settings, get_settings


def _sqlite_pragmas(settings: Settings) -> Callable[[Any, Any], None]:
    """The ``connect`` listener of a SQLite engine, with the tuning of ``settings``.

    Per connection: a page cache of ``HOTREFRESH_SQLITE_CACHE_MIB`` (64 MiB; SQLite's default is
    2 MiB) and a WAL checkpoint every ``HOTREFRESH_SQLITE_CHECKPOINT_PAGES`` (16,384 pages, 64 MiB
    at 4 KiB pages; default 1,000). Why (benchmark B1, 60,000 items): a backfill batch updates 256
    items at random places in half a dozen B-trees, about a thousand pages; with the defaults most
    of them were re-read from the OS on every batch and every commit also ran a checkpoint that
    copied them all back, and the write's CPU time per item grew with the gallery (88 us at 5,000
    items, 256 us at 60,000); with these, 150-175 us at 60,000. Why not more at 1M items
    (benchmark sqlite_scale, docs/service.md "SQLite at scale"): the write then costs 1.3-1.4x
    its CPU per item at 100k whatever the cache (256 MiB, 1 GiB, a memory map) or the checkpoint
    interval, because a page SQLite misses is one ``pread`` from the OS page cache (~1 us) and
    what grows is the pages a batch dirties and the checkpoints copy back."""
    cache_kib = settings.sqlite_cache_mib * 1024
    checkpoint_pages = settings.sqlite_checkpoint_pages

    def pragmas(dbapi_conn: Any, _record: Any) -> None:
        # WAL lets readers run beside one writer; busy_timeout makes a second writer wait
        # instead of failing with "database is locked".
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA cache_size=-{cache_kib}")  # negative: KiB, not pages
        cur.execute(f"PRAGMA wal_autocheckpoint={checkpoint_pages}")
        cur.close()

    return pragmas


def _sqlite_query_only(dbapi_conn, _record) -> None:  # noqa: ANN001 - DB-API connection
    # The read-only engine's connections refuse writes ("attempt to write a readonly database"),
    # so a write that strays into read_scope fails where it is made instead of vanishing.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA query_only=ON")
    cur.close()


@lru_cache(maxsize=16)
def get_engine(url: str, readonly: bool = False) -> Engine:
    """The engine for ``url``. On SQLite every read-write transaction takes the write lock up
    front (``BEGIN IMMEDIATE``: pysqlite's own handling defers it, and two writers that both
    upgrade a read lock deadlock instead of queueing on busy_timeout). ``readonly`` engines
    begin deferred instead: in WAL mode such a transaction reads a snapshot and never waits for
    a writer, so the backfill's reads (which items to load, the upgrade's state) do not queue
    behind its writes and stall the encoder (benchmark B1); their connections are
    ``query_only``. On PostgreSQL reads never wait for writers; the ``readonly`` engine is the
    same pool with every transaction begun ``READ ONLY`` (``postgresql_readonly``, reset when
    the connection goes back to the pool), so the server refuses a write made in one.

    A SQLite engine's connections get the page cache and checkpoint interval of the settings
    (``HOTREFRESH_SQLITE_*``) as they are when the engine for ``url`` is first built: the same
    for every connection of a process, whichever code path opened it."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas(get_settings()))
        if readonly:
            event.listen(engine, "connect", _sqlite_query_only)
        begin = "BEGIN" if readonly else "BEGIN IMMEDIATE"

        @event.listens_for(engine, "begin")
        def _begin(conn) -> None:  # noqa: ANN001
            conn.exec_driver_sql(begin)

        _disable_pysqlite_autobegin(engine)
        return engine
    if readonly:
        return get_engine(url).execution_options(postgresql_readonly=True)
    # connect_timeout: an unreachable server is a prompt 503 (service.errors), not a hung request.
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10, connect_args={"connect_timeout": 5})


def _disable_pysqlite_autobegin(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _no_autobegin(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None


@lru_cache(maxsize=16)
def _session_factory(url: str, readonly: bool = False) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url, readonly), expire_on_commit=False)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any error."""
    session = _session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def read_scope(url: str) -> Iterator[Session]:
    """One read-only transaction on a consistent snapshot; it never takes SQLite's write lock.
    A write in it fails on both databases (SQLite ``query_only``, PostgreSQL ``READ ONLY``), and
    closing ends the transaction with a rollback: writes belong in :func:`session_scope`.
    Objects read in it stay usable, detached, after it."""
    session = _session_factory(url, True)()
    try:
        yield session
    finally:
        session.close()  # expunges (does not expire) the objects; the pool rolls back
