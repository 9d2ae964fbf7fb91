"""The serving index's port, read side: what the search path and the routes ask of whatever holds
the gallery's vectors (the write side is ``service.indexport``).

Two kinds of adapter fit it. *In-process, replicated* (:class:`~service.api.serving.replica.Replica`,
today's): every API replica holds the whole mixed index in memory and follows the index log into
it; ``load``/``poll`` do real work and ``save_snapshot`` makes restarts fast. *Shared, external*
(:class:`~service.api.serving.milvus.MilvusIndex`): the store is written by the outbox's publisher
and relay, replicas hold no gallery, ``search`` is one batched call per segment of the plan and
then the same merge (``service.index.merge_segments``), ``catch_up`` has nothing to wait for,
``poll`` returns 0 and ``save_snapshot`` None. ``service.api.serving.backends.serving_index_for`` picks one by
``HOTREFRESH_INDEX_BACKEND``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from service.index import QueryPlan
from service.indexport import Change
from service.upgrade.plans import ServingPlan


@dataclass(frozen=True)
class Hit:
    external_id: str
    score: float
    model: str


@dataclass(frozen=True)
class IndexView:
    """What the search path needs to build a query plan: the query model, the serving plan
    (None: none), and the dimension of every segment that holds live vectors."""

    query_model: str | None
    plan: ServingPlan | None
    dims: dict[str, int]


@dataclass(frozen=True)
class IndexStatus:
    """The operator's and the tests' view of an index: ``/readyz`` shows most of it."""

    ready: bool
    query_model: str | None
    plan: ServingPlan | None
    counts: dict[str, int]  # live vectors per segment
    dims: dict[str, int] = field(default_factory=dict)  # every segment's dimension
    parked: dict[str, int] = field(default_factory=dict)  # vectors kept for an instant rollback
    position: str = ""  # the last change applied (the index-log entry id of a replica)
    ordinal: int = 0  # how many changes had ever been logged up to ``position``
    reloads: int = 0  # full loads from SQL, start-up included
    loaded_from: str | None = None  # "sql", "snapshot", or the store's name


class ServingIndex(Protocol):
    """The read side of an index backend. Every method is safe from request threads."""

    def start(self) -> None:
        """Begin serving: load (in the background) and keep up with changes."""

    def stop(self, timeout: float = 5.0) -> None: ...

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether the index answers searches (after waiting up to ``timeout``)."""

    def not_ready_because(self) -> str:
        """Why it does not answer yet (the 503's detail): still loading, or refused for good."""

    def save_snapshot(self) -> Path | None:
        """Keep what this process holds for a fast restart (at shutdown); None: nothing to keep."""

    def view(self) -> IndexView: ...

    def search(self, view: IndexView, plan: QueryPlan, k: int) -> list[Hit]:
        """The top ``k`` of the plan's first query, merged over its segments; ``view`` is the one
        the plan was built from (this adapter's own, from :meth:`view`)."""

    def model_of(self, item_id: int) -> str | None:
        """The segment the item is searched in; None: not in the index."""

    def catch_up(self, changes: Iterable[Change]) -> None:
        """Read-your-writes: reflect these committed changes before the request answers."""

    # The operator's and the tests' surface.
    def status(self) -> IndexStatus: ...

    def items(self) -> dict[int, str]:
        """Every item in the index and its segment (O(N): tests and operators only)."""

    def load(self) -> None:
        """Load now, in this thread (``start`` does it in the background)."""

    def reload(self) -> None:
        """Rebuild from SQL, the source of truth."""

    def poll(self, block_ms: int | None = None) -> int:
        """Apply what changed since the last call: how many changes (-1: it reloaded instead)."""
