"""Plain functions over a SQLAlchemy ``Session``: every read and write the service and workers
make against the source of truth. They never commit; the caller owns the transaction, so a
request's rows, vectors and state change land together or not at all."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import Insert, delete, func, select
from sqlalchemy.orm import Session

from service.db.schema import Embedding, GalleryItem, ModelRow, ServingState, Upgrade, utcnow

# States in which an upgrade still needs the old vectors (inserts must store both).
ACTIVE_UPGRADE_STATES = ("scoring", "running", "paused", "completed")
SERVING_STATE_ID = 1


# --- vectors -------------------------------------------------------------------------------


def vector_to_bytes(vector: np.ndarray) -> bytes:
    """float32, little-endian, C order: the one on-disk layout of a vector."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32, copy=False)


def _stack(blobs: Sequence[bytes]) -> np.ndarray:
    """One (n, D) float32 array from n blobs of equal length, without a Python loop per float."""
    if not blobs:
        return np.zeros((0, 0), dtype=np.float32)
    dim = len(blobs[0]) // 4
    return np.frombuffer(b"".join(blobs), dtype="<f4").astype(np.float32, copy=False).reshape(len(blobs), dim)


# --- models and serving state --------------------------------------------------------------


def get_model(session: Session, name: str) -> ModelRow | None:
    return session.scalar(select(ModelRow).where(ModelRow.name == name))


def list_models(session: Session) -> list[ModelRow]:
    return list(session.scalars(select(ModelRow).order_by(ModelRow.id)))


def add_model(session: Session, row: ModelRow) -> ModelRow:
    session.add(row)
    session.flush()
    return row


def peek_serving_state(session: Session) -> ServingState | None:
    """The serving-state row if it exists; a pure read, for read-only transactions."""
    return session.get(ServingState, SERVING_STATE_ID)


def get_serving_state(session: Session) -> ServingState:
    """The single serving-state row, created empty on first use."""
    state = peek_serving_state(session)
    if state is None:
        state = ServingState(id=SERVING_STATE_ID, gallery_model=None, query_model=None)
        session.add(state)
        session.flush()
    return state


def set_serving_state(
    session: Session, *, gallery_model: str | None = None, query_model: str | None = None
) -> ServingState:
    """Set whichever of the two models is given; ``None`` leaves that one unchanged."""
    state = get_serving_state(session)
    if gallery_model is not None:
        state.gallery_model = gallery_model
    if query_model is not None:
        state.query_model = query_model
    session.flush()
    return state


def active_upgrade(session: Session) -> Upgrade | None:
    """The upgrade that still owns the gallery (old vectors must be kept), if any."""
    return session.scalar(
        select(Upgrade).where(Upgrade.state.in_(ACTIVE_UPGRADE_STATES)).order_by(Upgrade.id.desc()).limit(1)
    )


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
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        found.update(session.scalars(select(GalleryItem.external_id).where(GalleryItem.external_id.in_(chunk))))
    return found


def external_id_map(session: Session) -> dict[int, str]:
    """Every item's id -> external id (no vectors: cheap next to a full vector load)."""
    rows = session.execute(select(GalleryItem.id, GalleryItem.external_id).execution_options(yield_per=50_000))
    return {int(i): e for i, e in rows}


def count_items(session: Session) -> int:
    return int(session.scalar(select(func.count()).select_from(GalleryItem)) or 0)


@dataclass(frozen=True)
class NewItem:
    external_id: str
    label: str | None
    image_key: str
    vectors: dict[str, np.ndarray]  # model name -> (D,) float32


def add_items(session: Session, items: Sequence[NewItem], active_model: str) -> list[GalleryItem]:
    """Insert items and every vector given for each; ``active_model`` must be among them."""
    rows = [
        GalleryItem(
            external_id=it.external_id, label=it.label, image_key=it.image_key, active_model=active_model
        )
        for it in items
    ]
    session.add_all(rows)
    session.flush()  # assigns ids
    for row, it in zip(rows, items, strict=True):
        if active_model not in it.vectors:
            raise ValueError(f"item {it.external_id!r} has no vector for its active model {active_model!r}")
        for model, vec in it.vectors.items():
            session.add(Embedding(item_id=row.id, model=model, vector=vector_to_bytes(vec)))
    session.flush()
    return rows


def delete_item(session: Session, item: GalleryItem) -> None:
    # Explicit, not only ON DELETE CASCADE: SQLite enforces cascades only with foreign_keys=ON,
    # and a connection made by another tool may not have it.
    session.execute(delete(Embedding).where(Embedding.item_id == item.id))
    session.delete(item)
    session.flush()


def upsert_embedding(session: Session, item_id: int, model: str, vector: np.ndarray) -> None:
    """Idempotent: re-encoding an item twice leaves one row with the latest vector."""
    upsert_embeddings(session, model, [item_id], np.asarray(vector)[None])


_UPSERTS: dict[str, Insert] = {}


def _vector_upsert(dialect: str) -> Insert:
    """``INSERT ... ON CONFLICT (item_id, model) DO UPDATE`` in the dialect's own syntax."""
    if dialect not in _UPSERTS:
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            raise NotImplementedError(f"no vector upsert for the {dialect!r} dialect (PostgreSQL or SQLite)")
        ins = dialect_insert(Embedding.__table__)
        _UPSERTS[dialect] = ins.on_conflict_do_update(
            index_elements=[Embedding.item_id, Embedding.model],
            set_={"vector": ins.excluded.vector, "created_at": ins.excluded.created_at},
        )
    return _UPSERTS[dialect]


def upsert_embeddings(
    session: Session, model: str, ids: Sequence[int], vectors: np.ndarray, created_at: datetime | None = None
) -> None:
    """Store ``model``'s vector of each item, replacing one already there, in one statement.

    Why not DELETE then INSERT: on PostgreSQL, ``DELETE ... WHERE model = :new AND item_id IN
    (...)`` was planned on the model index (its statistics, taken before the upgrade, saw no
    vector of the new model) and scanned every vector already backfilled, for every batch:
    quadratic in the gallery (4.8 ms per batch half way through 60,000 items, to delete nothing).
    The upsert finds each row through the primary key, whatever the statistics say."""
    created_at = created_at or utcnow()
    session.connection().execute(
        _vector_upsert(session.get_bind().dialect.name),
        [{"item_id": int(i), "model": model, "vector": vector_to_bytes(v), "created_at": created_at}
         for i, v in zip(ids, vectors, strict=True)],
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
    ids = sorted(set(ids))
    got_ids: list[int] = []
    blobs: list[bytes] = []
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = session.execute(
            select(Embedding.item_id, Embedding.vector)
            .where(Embedding.model == model, Embedding.item_id.in_(chunk))
            .order_by(Embedding.item_id)
        )
        for item_id, blob in rows:
            got_ids.append(int(item_id))
            blobs.append(blob)
    return np.asarray(got_ids, dtype=np.int64), _stack(blobs)


def iter_model_vectors(
    session: Session, model: str, *, chunk: int = 10_000
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids, vectors) of every stored vector of ``model``, streamed in id order, ``chunk`` rows at a
    time (keyset pagination, so memory stays bounded and no OFFSET scan grows with the table)."""
    after = -1
    while True:
        rows = session.execute(
            select(Embedding.item_id, Embedding.vector)
            .where(Embedding.model == model, Embedding.item_id > after)
            .order_by(Embedding.item_id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        ids = np.asarray([r[0] for r in rows], dtype=np.int64)
        yield ids, _stack([r[1] for r in rows])
        after = int(ids[-1])


def iter_active_vectors(session: Session, *, chunk: int = 10_000) -> Iterator[VectorChunk]:
    """Every live item with the vector of its *active* model, in id order, as per-model chunks:
    exactly what a serving index must hold (invariant 1: one live vector per item)."""
    after = -1
    while True:
        rows = session.execute(
            select(GalleryItem.id, GalleryItem.external_id, GalleryItem.active_model, Embedding.vector)
            .join(Embedding, _ACTIVE_VECTOR)
            .where(GalleryItem.id > after)
            .order_by(GalleryItem.id)
            .limit(chunk)
        ).all()
        if not rows:
            return
        by_model: dict[str, list] = {}
        for row in rows:
            by_model.setdefault(row[2], []).append(row)
        for model, group in by_model.items():
            yield VectorChunk(
                model=model,
                ids=np.asarray([r[0] for r in group], dtype=np.int64),
                vectors=_stack([r[3] for r in group]),
                external_ids=[r[1] for r in group],
            )
        after = int(rows[-1][0])


@dataclass(frozen=True)
class ItemState:
    id: int
    external_id: str
    active_model: str
    vector: np.ndarray | None  # the active model's vector; None if (unexpectedly) missing


def get_item_states(session: Session, ids: Iterable[int]) -> dict[int, ItemState]:
    """The current SQL truth for ``ids`` (absent = deleted): what a replica converges to."""
    ids = sorted(set(int(i) for i in ids))
    out: dict[int, ItemState] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = session.execute(
            select(GalleryItem.id, GalleryItem.external_id, GalleryItem.active_model, Embedding.vector)
            .outerjoin(Embedding, _ACTIVE_VECTOR)
            .where(GalleryItem.id.in_(chunk))
        )
        for item_id, ext, model, blob in rows:
            out[int(item_id)] = ItemState(
                int(item_id), ext, model, vector_from_bytes(blob) if blob is not None else None
            )
    return out
