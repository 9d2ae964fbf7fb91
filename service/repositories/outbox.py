"""Index changes staged in SQL (the ``index_log_outbox`` table): written inside the transaction
of the change they describe, dropped once published (``service.indexport.unit_of_work``)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from service.db.schema import IndexLogOutbox


def add(session: Session, op: str, model: str | None, ids: Sequence[int]) -> int:
    """Stage one entry in the caller's transaction; returns its row id."""
    row = IndexLogOutbox(op=op, model=model, ids=json.dumps([int(i) for i in ids]), staged_at=time.time())
    session.add(row)
    session.flush()  # assigns the row's id
    return int(row.id)


def drop(session: Session, row_ids: Sequence[int]) -> None:
    if row_ids:
        session.execute(delete(IndexLogOutbox).where(IndexLogOutbox.id.in_([int(i) for i in row_ids])))


def any_staged_before(session: Session, cutoff: float) -> bool:
    """Whether some entry was staged at or before ``cutoff`` (unix seconds): the cheap usual answer."""
    return session.scalar(select(IndexLogOutbox.id).where(IndexLogOutbox.staged_at <= cutoff).limit(1)) is not None


def claim_staged_before(session: Session, cutoff: float, limit: int) -> list[IndexLogOutbox]:
    """The oldest entries staged at or before ``cutoff``, locked for this transaction (``FOR
    UPDATE SKIP LOCKED`` on PostgreSQL, so two replicas never claim the same row; SQLite
    serialises writers)."""
    return list(
        session.scalars(
            select(IndexLogOutbox)
            .where(IndexLogOutbox.staged_at <= cutoff)
            .order_by(IndexLogOutbox.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
