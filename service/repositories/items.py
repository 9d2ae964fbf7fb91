"""Gallery items and their vectors: inserts and deletes, the moves of a backfill or a rollback,
and the bulk reads a replica, a scoring run or a probe measurement makes."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import Any, Literal

import numpy as np
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Connection,
    DateTime,
    Integer,
    LargeBinary,
    Select,
    String,
    TextClause,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.orm import Session

from service.db.schema import Embedding, GalleryItem
from service.repositories.common import (
    chunks,
    copy_in,
    copy_out,
    id_chunks,
    id_param,
    in_ids,
    stack,
    table,
    vector_from_bytes,
    vector_to_bytes,
)
from service.timestamps import utcnow

_items = table(GalleryItem)
_vectors = table(Embedding)

# --- gallery items -------------------------------------------------------------------------


def get_item(session: Session, external_id: str) -> GalleryItem | None:
    return session.scalar(select(GalleryItem).where(GalleryItem.external_id == external_id))


def get_items_by_ids(session: Session, ids: Iterable[int]) -> list[GalleryItem]:
    ids = list(ids)
    if not ids:
        return []
    return list(session.scalars(select(GalleryItem).where(GalleryItem.id.in_(ids))))


def existing_external_ids(session: Session, external_ids: Iterable[str]) -> set[str]:
    wanted = list(external_ids)
    found: set[str] = set()
    for chunk in chunks(wanted):
        found.update(session.scalars(select(GalleryItem.external_id).where(GalleryItem.external_id.in_(chunk))))
    return found


def external_id_map(session: Session) -> dict[int, str]:
    """Every item's id -> external id (no vectors: cheap next to a full vector load)."""
    rows = session.execute(select(GalleryItem.id, GalleryItem.external_id).execution_options(yield_per=50_000))
    return {int(i): e for i, e in rows}


def id_range(session: Session) -> tuple[int, int] | None:
    """The smallest and largest item id (None: an empty gallery)."""
    lo, hi = session.execute(select(func.min(GalleryItem.id), func.max(GalleryItem.id))).one()
    return None if lo is None else (int(lo), int(hi))


def ids_from(session: Session, start: int, limit: int) -> list[int]:
    """Up to ``limit`` item ids from ``start`` on, ascending (a keyset page: O(limit) at any N)."""
    rows = session.scalars(
        select(GalleryItem.id).where(GalleryItem.id >= int(start)).order_by(GalleryItem.id).limit(int(limit))
    )
    return [int(i) for i in rows]


def count_items(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(GalleryItem)) or 0)


@dataclass(frozen=True)
class NewItem:
    external_id: str
    label: str | None
    image_key: str
    vectors: dict[str, np.ndarray]  # model name -> (D,) float32


@dataclass(frozen=True)
class AddedRow:
    id: int
    external_id: str
    active_model: str


# Rows in, ids out, in the parameters' order (SQLAlchemy's batched "insertmanyvalues").
_INSERT_ITEMS = insert(_items).returning(_items.c.id, sort_by_parameter_order=True)
# PostgreSQL: the batch's ids drawn from the items' own sequence up front, so the rows can go in
# by COPY with their ids (COPY returns nothing) and every item knows its id without a lookup.
_NEXT_ITEM_IDS = text("SELECT nextval(pg_get_serial_sequence('gallery_items', 'id')) FROM generate_series(1, :n)")
_ITEM_COLUMNS = ("id", "external_id", "label", "image_key", "active_model", "created_at")
_ITEM_TYPES = ("int8", "varchar", "varchar", "varchar", "varchar", "timestamptz")
_VECTOR_COLUMNS = ("item_id", "model", "vector", "created_at")
_VECTOR_TYPES = ("int8", "varchar", "bytea", "timestamptz")


def add_items(session: Session, items: Sequence[NewItem], active_model: str) -> list[AddedRow]:
    """Insert items and every vector given for each; ``active_model`` must be among them.

    Core statements, not ORM objects: the unit of work cost about 300 µs an item on PostgreSQL,
    most of a bulk ingest's database time (benchmark B6). SQLite: the rows, then one set-based
    upsert per model (``upsert_embeddings``). PostgreSQL: the ids from the sequence, then one
    binary COPY of the rows and one of the vectors (new items have no vector to replace):
    benchmark pg_bulk. A duplicate external id raises ``IntegrityError`` on either."""
    for it in items:
        if active_model not in it.vectors:
            raise ValueError(f"item {it.external_id!r} has no vector for its active model {active_model!r}")
    if not items:
        return []
    now = utcnow()
    copy = session.get_bind().dialect.name == "postgresql"
    conn = session.connection()
    if copy:
        ids = sorted(int(i) for i in conn.execute(_NEXT_ITEM_IDS, {"n": len(items)}).scalars())
        copy_in(
            session,
            _items.name,
            _ITEM_COLUMNS,
            _ITEM_TYPES,
            ((i, it.external_id, it.label, it.image_key, active_model, now) for i, it in zip(ids, items, strict=True)),
        )
    else:
        rows = [
            {
                "external_id": it.external_id,
                "label": it.label,
                "image_key": it.image_key,
                "active_model": active_model,
                "created_at": now,
            }
            for it in items
        ]
        ids = [int(i) for i in conn.execute(_INSERT_ITEMS, rows).scalars().all()]
    by_model: dict[str, list[int]] = {}
    for k, it in enumerate(items):
        for model in it.vectors:
            by_model.setdefault(model, []).append(k)
    if copy:
        copy_in(
            session,
            _vectors.name,
            _VECTOR_COLUMNS,
            _VECTOR_TYPES,
            (
                (ids[k], model, vector_to_bytes(items[k].vectors[model]), now)
                for model, ks in by_model.items()
                for k in ks
            ),
        )
    else:
        for model, ks in by_model.items():
            vectors = np.stack([items[k].vectors[model] for k in ks])
            upsert_embeddings(session, model, [ids[k] for k in ks], vectors, now)
    return [AddedRow(i, it.external_id, active_model) for i, it in zip(ids, items, strict=True)]


def delete_item(session: Session, item: GalleryItem) -> None:
    # Explicit, not only ON DELETE CASCADE: SQLite enforces cascades only with foreign_keys=ON,
    # and a connection made by another tool may not have it.
    session.execute(delete(Embedding).where(Embedding.item_id == item.id))
    session.delete(item)
    session.flush()


def upsert_embedding(session: Session, item_id: int, model: str, vector: np.ndarray) -> None:
    """Idempotent: re-encoding an item twice leaves one row with the latest vector."""
    upsert_embeddings(session, model, [item_id], np.asarray(vector)[None])


_UPSERTS: dict[str, TextClause] = {}
# One statement per batch, whatever its size: the ids as one array parameter, the vectors as one
# blob that the statement cuts (row k's vector is its bytes k*n .. k*n+n-1). Rows come from the
# array in order (json_each's ``key``, unnest's ordinality), so the Python side builds five
# values instead of four per row.
_UPSERT_FROM = {
    "postgresql": "SELECT t.id, :model, substring(:blob from ((t.k - 1) * :nbytes + 1)::int for :nbytes), :now, "
    ":mapped FROM unnest(:ids) WITH ORDINALITY AS t(id, k)",
    "sqlite": "SELECT j.value, :model, substr(:blob, j.key * :nbytes + 1, :nbytes), :now, :mapped "
    "FROM json_each(:ids) AS j WHERE true",  # WHERE: SQLite's parser needs it to tell ON CONFLICT from a join's ON
}


def _vector_upsert(dialect: str) -> TextClause:
    """``INSERT ... SELECT ... ON CONFLICT (item_id, model) DO UPDATE`` in the dialect's own syntax.

    Why not ``executemany`` of one row per vector (the earlier form): SQLAlchemy processed every
    row's four parameters in Python, about a third of a backfill batch's SQL time (benchmark
    pipeline_ceiling). Why not COPY on PostgreSQL: COPY cannot upsert, so it would take a
    temporary table and a second statement, where this is one."""
    if dialect not in _UPSERTS:
        if dialect not in _UPSERT_FROM:
            raise NotImplementedError(f"no vector upsert for the {dialect!r} dialect (PostgreSQL or SQLite)")
        _UPSERTS[dialect] = text(
            "INSERT INTO embeddings (item_id, model, vector, created_at, mapped) "
            + _UPSERT_FROM[dialect]
            + " ON CONFLICT (item_id, model) DO UPDATE SET vector = excluded.vector, created_at = excluded.created_at, "
            "mapped = excluded.mapped"
        ).bindparams(
            id_param(),
            bindparam("model", type_=String()),
            bindparam("blob", type_=LargeBinary()),
            bindparam("nbytes", type_=Integer()),
            bindparam("now", type_=DateTime(timezone=True)),
            bindparam("mapped", type_=Boolean()),
        )
    return _UPSERTS[dialect]


def upsert_embeddings(
    session: Session,
    model: str,
    ids: Sequence[int],
    vectors: np.ndarray,
    created_at: datetime | None = None,
    *,
    mapped: bool = False,
) -> None:
    """Store ``model``'s vector of each item, replacing one already there, in one statement.
    ``mapped``: the vectors were mapped from the items' old vectors, not encoded (migration 0008);
    an encoded vector written over a mapped one clears the mark.

    Why not DELETE then INSERT: on PostgreSQL, ``DELETE ... WHERE model = :new AND item_id IN
    (...)`` was planned on the model index (its statistics, taken before the upgrade, saw no
    vector of the new model) and scanned every vector already backfilled, for every batch:
    quadratic in the gallery (4.8 ms per batch half way through 60,000 items, to delete nothing).
    The upsert finds each row through the primary key, whatever the statistics say."""
    vectors = np.asarray(vectors)
    if len(ids) != len(vectors):
        raise ValueError(f"{len(ids)} ids for {len(vectors)} vectors")
    if not len(ids):
        return
    blob = vector_to_bytes(vectors)
    session.connection().execute(
        _vector_upsert(session.get_bind().dialect.name),
        {
            "ids": ids,
            "model": model,
            "blob": blob,
            "nbytes": len(blob) // len(ids),
            "now": created_at or utcnow(),
            "mapped": mapped,
        },
    )


# Joins an item to the vector of its own active model.
_ACTIVE_VECTOR = (Embedding.item_id == GalleryItem.id) & (Embedding.model == GalleryItem.active_model)


# --- bulk reads for the index --------------------------------------------------------------


@dataclass(frozen=True)
class VectorChunk:
    model: str
    ids: np.ndarray  # (n,) int64
    vectors: np.ndarray  # (n, D) float32
    external_ids: list[str]


def get_vectors(session: Session, model: str, ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """The stored vectors of ``model`` for those ``ids`` that have one, in ascending id order."""
    got_ids: list[int] = []
    blobs: list[bytes] = []
    for chunk in id_chunks(sorted(set(ids))):
        rows = session.execute(
            select(Embedding.item_id, Embedding.vector)
            .where(Embedding.model == model, Embedding.item_id.in_(chunk))
            .order_by(Embedding.item_id)
        )
        for item_id, blob in rows:
            got_ids.append(int(item_id))
            blobs.append(blob)
    return np.asarray(got_ids, dtype=np.int64), stack(blobs)


def _pages(
    session: Session, query: Select, key: ColumnElement[int], types: Sequence[str], chunk: int
) -> Iterator[list[Any]]:
    """The rows of ``query`` (ordered by ``key``, its first column) in lists of up to ``chunk``.

    SQLite: keyset pages (``key > last`` ... ``LIMIT chunk``), so memory stays bounded and no
    OFFSET scan grows with the table. PostgreSQL: one binary COPY of the whole query, cut here.
    Why not the pages there too: without fresh statistics (a gallery just loaded) it planned each
    page as a scan and a sort of every row after it, quadratic in the gallery (2.1 s for 100,000
    vectors, against 0.5 s in one stream; benchmark pg_bulk), and bytea came back hex-encoded."""
    if session.get_bind().dialect.name == "postgresql":
        rows = copy_out(session, query, types)
        while page := list(islice(rows, chunk)):
            yield page
        return
    after = -1
    while True:
        page = list(session.execute(query.where(key > after).limit(chunk)).all())
        if not page:
            return
        yield page
        after = int(page[-1][0])


_MODEL_VECTORS = (
    select(Embedding.item_id, Embedding.vector)
    .where(Embedding.model == bindparam("model", type_=String()))
    .order_by(Embedding.item_id)
)


def iter_model_vectors(session: Session, model: str, *, chunk: int = 10_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of every stored vector of ``model``, streamed in id order, ``chunk`` rows at a
    time (:func:`_pages`)."""
    query = _MODEL_VECTORS.params(model=model)
    for rows in _pages(session, query, _vectors.c.item_id, ("int8", "bytea"), chunk):
        yield np.asarray([r[0] for r in rows], dtype=np.int64), stack([r[1] for r in rows])


_ACTIVE_VECTORS = (
    select(GalleryItem.id, GalleryItem.external_id, GalleryItem.active_model, Embedding.vector)
    .join(Embedding, _ACTIVE_VECTOR)
    .order_by(GalleryItem.id)
)


def iter_active_vectors(session: Session, *, chunk: int = 10_000) -> Iterator[VectorChunk]:
    """Every live item with the vector of its *active* model, in id order, as per-model chunks:
    exactly what a serving index must hold (invariant 1: one live vector per item)."""
    for rows in _pages(session, _ACTIVE_VECTORS, _items.c.id, ("int8", "varchar", "varchar", "bytea"), chunk):
        by_model: dict[str, list] = {}
        for row in rows:
            by_model.setdefault(row[2], []).append(row)
        for model, group in by_model.items():
            yield VectorChunk(
                model=model,
                ids=np.asarray([r[0] for r in group], dtype=np.int64),
                vectors=stack([r[3] for r in group]),
                external_ids=[r[1] for r in group],
            )


@dataclass(frozen=True)
class ItemState:
    id: int
    external_id: str
    active_model: str
    vector: np.ndarray | None  # the active model's vector; None if (unexpectedly) missing


_ITEM_STATES = (
    select(GalleryItem.id, GalleryItem.external_id, GalleryItem.active_model, Embedding.vector)
    .outerjoin(Embedding, _ACTIVE_VECTOR)
    .where(in_ids(_items.c.id))
)


def get_item_states(session: Session, ids: Iterable[int]) -> dict[int, ItemState]:
    """The current SQL truth for ``ids`` (absent = deleted): what a replica converges to. One
    statement, the ids as one array parameter (:func:`~service.repositories.common.in_ids`)."""
    rows = session.execute(_ITEM_STATES, {"ids": sorted({int(i) for i in ids})})
    return {
        int(item_id): ItemState(int(item_id), ext, model, vector_from_bytes(blob) if blob is not None else None)
        for item_id, ext, model, blob in rows
    }


def vector_source(session: Session, item_id: int, model: str) -> Literal["encoded", "mapped"] | None:
    """``"mapped"`` or ``"encoded"``: how the item's ``model`` vector was made (None: it has none)."""
    mapped = session.scalar(select(Embedding.mapped).where(Embedding.item_id == int(item_id), Embedding.model == model))
    return None if mapped is None else ("mapped" if mapped else "encoded")


_IMAGE_KEYS = select(_items.c.id, _items.c.image_key).where(in_ids(_items.c.id))


def image_keys(session: Session, ids: Iterable[int]) -> dict[int, str]:
    """Image-store key of each of ``ids`` still in the gallery (absent: deleted)."""
    return {int(i): k for i, k in session.execute(_IMAGE_KEYS, {"ids": list(ids)}).all()}


def external_ids_of(session: Session, ids: Iterable[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in id_chunks(ids):
        out.update(
            (int(i), e)
            for i, e in session.execute(
                select(GalleryItem.id, GalleryItem.external_id).where(GalleryItem.id.in_(chunk))
            )
        )
    return out


def count_on_model(session: Session, model: str) -> int:
    """Items whose active model is ``model``."""
    return int(
        session.scalar(select(func.count()).select_from(GalleryItem).where(GalleryItem.active_model == model)) or 0
    )


def fraction_on(session: Session, model: str) -> float:
    """Share of gallery items whose active model is ``model`` (one COUNT, no vectors read)."""
    total, on = session.execute(
        select(
            func.count(), func.coalesce(func.sum(case((GalleryItem.active_model == model, 1), else_=0)), 0)
        ).select_from(GalleryItem)
    ).one()
    return float(on / total) if total else 0.0


def labeled_items(session: Session, model: str) -> list[tuple[int, str]]:
    """(id, label) of every labeled item on ``model``, ids ascending (the probes' population)."""
    rows = session.execute(
        select(GalleryItem.id, GalleryItem.label)
        .where(GalleryItem.active_model == model, GalleryItem.label.is_not(None))
        .order_by(GalleryItem.id)
    )
    return [(int(i), str(label)) for i, label in rows]


def labels(session: Session) -> dict[int, str | None]:
    """Every item's label (None: unlabeled)."""
    return {int(i): label for i, label in session.execute(select(GalleryItem.id, GalleryItem.label))}


def return_to_model(session: Session, *, from_model: str, to_model: str) -> None:
    """Rollback's SQL: every item on ``from_model`` that still has a ``to_model`` vector goes back
    to it, and the ``from_model`` vectors of items now on ``to_model`` are deleted."""
    has_old = exists().where(Embedding.item_id == GalleryItem.id, Embedding.model == to_model)
    session.execute(
        update(GalleryItem)
        .where(GalleryItem.active_model == from_model, has_old)
        .values(active_model=to_model)
        .execution_options(synchronize_session=False)
    )
    back = select(GalleryItem.id).where(GalleryItem.active_model == to_model)
    session.execute(
        delete(Embedding)
        .where(Embedding.model == from_model, Embedding.item_id.in_(back))
        .execution_options(synchronize_session=False)
    )


def delete_model_vectors(session: Session, model: str) -> None:
    """Every stored vector of ``model`` (commit retires the old model)."""
    session.execute(delete(Embedding).where(Embedding.model == model))


_LOCK_ITEMS = select(_items.c.id).where(in_ids(_items.c.id)).with_for_update()
# Moves the items and locks their rows in one statement, returning the ids still in the gallery:
# a concurrent DELETE of one either finished first (it is not returned) or waits for this
# transaction. (A SELECT ... FOR UPDATE before the UPDATE wrote every row lock twice on PostgreSQL.)
_SET_ACTIVE = update(_items).where(in_ids(_items.c.id)).values(active_model=bindparam("model")).returning(_items.c.id)


def lock_items(session: Session, ids: Sequence[int]) -> list[int]:
    """The ids still in the gallery, their rows locked until the transaction ends, so a
    concurrent DELETE either finished first (the id is missing here) or waits for this one."""
    return [int(i) for i in session.connection().execute(_LOCK_ITEMS, {"ids": ids}).scalars()]


def set_active_model(conn: Connection, model: str, ids: list[int]) -> list[int]:
    """Move the items to ``model``, locking their rows; returns the ids still present, ascending."""
    return sorted(int(i) for i in conn.execute(_SET_ACTIVE, {"model": model, "ids": ids}).scalars().all())
