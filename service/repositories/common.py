"""What every repository needs: the one on-disk layout of a vector, and id lists cut to a size
every database accepts in one ``IN (...)``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar, cast

import numpy as np
from sqlalchemy import BindParameter, Table, bindparam
from sqlalchemy.orm import DeclarativeBase

T = TypeVar("T")

IN_CHUNK = 500  # ids per IN (...) list: well under SQLite's and PostgreSQL's parameter limits
# The one expanding parameter of the batch statements: compiled once and cached, instead of
# coercing every id of every batch into a fresh IN clause (a fifth of a batch's SQL time).
IDS: BindParameter[list[int]] = bindparam("ids", expanding=True)


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
