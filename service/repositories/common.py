"""What every repository needs: the one on-disk layout of a vector, id lists bound as one
parameter (:func:`in_ids`), and id lists cut to a size every database accepts in one ``IN (...)``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import numpy as np
from sqlalchemy import BigInteger, BindParameter, ColumnElement, Dialect, Select, Table, Text, bindparam
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase, Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import NullType, TypeDecorator, TypeEngine

T = TypeVar("T")

IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits


class IdArray(TypeDecorator[list[int]]):
    """A list of ids bound as ONE parameter: ``bigint[]`` on PostgreSQL, a JSON array text on
    SQLite (read back by ``json_each``). Any length, and no per-id bind parameters to render."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import ARRAY

            return dialect.type_descriptor(ARRAY(BigInteger))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Iterable[int] | None, dialect: Dialect) -> Any:
        if value is None:
            raise ValueError("an id list parameter needs a list, not None")
        ids = [int(i) for i in value]  # numpy integers too; anything else fails here, not in SQL
        return ids if dialect.name == "postgresql" else "[" + ",".join(map(str, ids)) + "]"


class _InIds(FunctionElement[Any]):
    """``column IN (the ids of one IdArray parameter)``, in each dialect's own form."""

    name = "in_ids"
    type = NullType()  # not Boolean: SQLite would get "... = 1" appended in a WHERE
    inherit_cache = True


@compiles(_InIds)
def _in_ids_json(element: _InIds, compiler: SQLCompiler, **kw: Any) -> str:
    column, ids = element.clauses
    return f"{compiler.process(column, **kw)} IN (SELECT value FROM json_each({compiler.process(ids, **kw)}))"


@compiles(_InIds, "postgresql")
def _in_ids_array(element: _InIds, compiler: SQLCompiler, **kw: Any) -> str:
    column, ids = element.clauses
    return f"{compiler.process(column, **kw)} = ANY({compiler.process(ids, **kw)})"


def id_param(name: str = "ids") -> BindParameter[list[int]]:
    return bindparam(name, type_=IdArray())


def in_ids(column: ColumnElement[Any], name: str = "ids") -> ColumnElement[bool]:
    """``column IN (:name)`` where ``:name`` is one list of ids of any length.

    Why not ``IN`` with an expanding parameter: SQLAlchemy renders and binds one parameter per
    id on every execution, and cuts long lists into chunks (the parameter limits); on the
    backfill's batch statements that was most of their Python time (benchmark
    pipeline_ceiling). One array parameter is compiled once and bound by the driver in C."""
    return _InIds(column, id_param(name))


def table(model: type[DeclarativeBase]) -> Table:
    """The Core table of an ORM class (typed as a plain ``FromClause`` by SQLAlchemy's stubs)."""
    return cast(Table, model.__table__)


def chunks(values: Iterable[T], n: int = IN_CHUNK) -> list[list[T]]:
    """``values`` in order, cut into lists of at most ``n``."""
    flat = list(values)
    return [flat[i : i + n] for i in range(0, len(flat), n)]


def id_chunks(ids: Iterable[int], n: int = IN_CHUNK) -> list[list[int]]:
    """``ids`` as Python ints (numpy integers are not every driver's), cut like :func:`chunks`."""
    return chunks((int(i) for i in ids), n)


def vector_to_bytes(vector: np.ndarray) -> bytes:
    """float32, little-endian, C order: the one on-disk layout of a vector."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)


def stack(blobs: Sequence[bytes]) -> np.ndarray:
    """One (n, D) float32 array from n blobs of equal length, without a Python loop per float."""
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    dim = len(blobs[0]) // 4
    return np.frombuffer(b"".join(blobs), dtype="<f4").astype(np.float32, copy=False).reshape(len(blobs), dim)


# --- PostgreSQL's COPY, in binary ------------------------------------------------------------
# Binary, not text: a value goes over as its bytes, so a tab, a newline or a backslash in a label
# needs no escaping (and a bytea no hex), and psycopg packs and unpacks the rows in C. Both run on
# the session's own connection, inside its transaction: a rollback undoes a COPY like a statement.


@contextmanager
def _as_statement_error(session: Session, statement: str) -> Iterator[None]:
    """A driver error raised as SQLAlchemy wraps a statement's (``IntegrityError`` for a
    duplicate key, so callers catch one type whatever the path)."""
    dialect = session.get_bind().dialect
    dbapi_error = dialect.loaded_dbapi.Error
    try:
        yield
    except dbapi_error as e:
        raise DBAPIError.instance(statement, None, e, dbapi_error, dialect=dialect) from e


def _driver_connection(session: Session) -> Any:
    return session.connection().connection.driver_connection


def copy_in(
    session: Session, table: str, columns: Sequence[str], types: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """``rows`` into ``table`` (``columns``, of PostgreSQL ``types`` such as ``int8``) in one
    ``COPY ... FROM STDIN (FORMAT BINARY)``."""
    statement = f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    cur = _driver_connection(session).cursor()
    with _as_statement_error(session, statement), cur, cur.copy(statement) as copy:
        copy.set_types(list(types))
        for row in rows:
            copy.write_row(row)


def copy_out(session: Session, query: Select, types: Sequence[str]) -> Iterator[tuple[Any, ...]]:
    """The rows of ``query`` (its columns of PostgreSQL ``types``) streamed by one
    ``COPY (...) TO STDOUT (FORMAT BINARY)``: one statement and one scan, however many rows,
    and no more of them in memory at a time than the caller keeps."""
    compiled = query.compile(dialect=session.get_bind().dialect)
    statement = f"COPY ({compiled}) TO STDOUT (FORMAT BINARY)"
    cur = _driver_connection(session).cursor()
    with _as_statement_error(session, statement), cur, cur.copy(statement, compiled.params or None) as copy:
        copy.set_types(list(types))
        yield from copy.rows()
