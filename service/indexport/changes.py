"""One unit of change to the serving index, as writers describe it after their SQL change.

A change names ids, never vectors: whoever applies it reads the ids' *current* SQL state, so
applying one twice, late, or after a newer one converges to the same index (idempotent replay).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from service.indexlog import OPS


@dataclass(frozen=True)
class Change:
    op: str  # one of service.indexlog.OPS
    model: str | None = None
    ids: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"unknown index change {self.op!r}; expected one of {OPS}")

    @classmethod
    def add(cls, model: str, ids: Iterable[int]) -> Change:
        """New items, live on ``model``."""
        return cls("add", model, _ids(ids))

    @classmethod
    def move(cls, model: str, ids: Iterable[int]) -> Change:
        """Items now live on ``model`` (re-encoded by the backfill)."""
        return cls("move", model, _ids(ids))

    @classmethod
    def delete(cls, ids: Iterable[int], model: str | None = None) -> Change:
        return cls("delete", model, _ids(ids))

    @classmethod
    def switch(cls, model: str) -> Change:
        """The query model or the serving plan changed (an upgrade started, a plan was chosen)."""
        return cls("switch", model)

    @classmethod
    def rollback(cls, to_model: str) -> Change:
        """Every item is back on ``to_model``, the upgrade's model gone."""
        return cls("rollback", to_model)

    @classmethod
    def commit(cls, dropped_model: str) -> Change:
        """The upgrade is final: nothing lives on ``dropped_model`` any more."""
        return cls("commit", dropped_model)

    @property
    def item_ids(self) -> list[int]:
        return list(self.ids)


def _ids(ids: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(i) for i in ids)
