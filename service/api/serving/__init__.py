"""The serving state of one API process, and the jobs around it, one module each:

- ``state``: what the replica holds (index, external ids, query model, encoders, log position);
- ``loading``: from a snapshot plus the log, else from SQL; snapshots at shutdown;
- ``applying``: index-log entries and a request's own writes, converging to SQL;
- ``follower``: the thread that tails the index log and relays the outbox;
- ``query``: the search path.

:class:`Serving` is the replica the app and the routes hold: the state with each job as a
method, so callers need not know which module does what.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import redis as redis_lib

from service import indexlog
from service.api.serving import applying, follower, loading, query
from service.api.serving.query import NoModel, NotReady
from service.api.serving.state import ReplicaState
from service.settings import Settings

if TYPE_CHECKING:
    from models.checkpoint import LoadedModel

__all__ = ["NoModel", "NotReady", "ReplicaState", "Serving"]


class Serving(ReplicaState):
    def __init__(self, settings: Settings, redis: redis_lib.Redis) -> None:
        super().__init__(settings, redis)
        self._follower = follower.Follower(self)

    # loading
    def load(self) -> None:
        loading.load(self)

    def load_from_sql(self) -> None:
        loading.load_from_sql(self)

    def save_snapshot(self) -> Path | None:
        return loading.save_snapshot(self)

    # applying
    def sync_ids(self, ids: Iterable[int]) -> None:
        applying.sync_ids(self, ids)

    def refresh_query_model(self) -> None:
        applying.refresh_query_model(self)

    def apply(self, entry: indexlog.Entry) -> None:
        applying.apply(self, entry)

    # following
    def start(self) -> None:
        self._follower.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._follower.stop(timeout)

    def step(self, block_ms: int | None = None) -> int:
        return follower.step(self, block_ms)

    def needs_reload(self) -> bool:
        return follower.needs_reload(self)

    def relay_staged(self) -> int:
        return follower.relay_staged(self)

    # querying
    def require_ready(self) -> None:
        query.require_ready(self)

    def encoder(self, model: str) -> LoadedModel:
        return query.encoder(self, model)

    def encode_query(self, data: bytes) -> tuple[str, query.Embeddings]:
        return query.encode_query(self, data, self.settings)

    def search_vector(self, embeddings: query.Embeddings | np.ndarray, k: int) -> list[tuple[str, float, str]]:
        return query.search_vector(self, embeddings, k)
