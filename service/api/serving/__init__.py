"""Serving: what the routes hold to answer searches. One object, :class:`Serving`: the encoders
this process loaded and the serving index (the read side of the index port,
:class:`~service.api.serving.port.ServingIndex`), with a small public surface:

- ``start`` / ``stop`` / ``save_snapshot``: the app's lifespan;
- ``ready`` / ``require_ready``: may this process answer yet;
- ``search`` (``encode_query`` then ``search_vector``): encode with every model the serving plan
  needs and take the plan's top-k;
- ``model_of``: the segment an item is searched in (``GET /gallery``);
- ``catch_up``: read-your-writes, after a request's own unit of work;
- ``status``: ``/readyz``, operators and tests; with ``load``, ``reload``, ``poll`` and
  ``items`` as the operator's and the tests' surface;
- ``encoders``: the encoder cache, shared with this process's writes (``POST /gallery``).

Modules: ``port`` (the read side of the port), ``replica`` (its in-process replicated adapter)
and ``follower`` (its thread), ``backends`` (the adapter by setting), ``query`` (encoding and
the query plan, the same for every backend).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import redis as redis_lib

from service.api.serving.backends import serving_index_for
from service.api.serving.port import Hit, IndexStatus, IndexView, ServingIndex
from service.api.serving.query import Embeddings, NoModel, NotReady, encode, plan_for
from service.indexport import Change
from service.registry import EncoderCache
from service.settings import Settings

__all__ = ["Hit", "IndexStatus", "NoModel", "NotReady", "Serving", "ServingIndex"]


class Serving:
    def __init__(self, settings: Settings, redis: redis_lib.Redis, index: ServingIndex | None = None) -> None:
        self._settings = settings
        self.encoders = EncoderCache(settings.device)
        self._index = index or serving_index_for(settings, redis, on_retired=self.encoders.release)

    # -- the app's lifespan ----------------------------------------------------------------------
    def start(self) -> None:
        self._index.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._index.stop(timeout)

    def save_snapshot(self) -> Path | None:
        return self._index.save_snapshot()

    # -- the routes ------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self._index.wait_ready(0)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._index.wait_ready(timeout)

    def require_ready(self) -> None:
        if not self.ready:
            raise NotReady(self._index.not_ready_because())

    def search(self, data: bytes, k: int) -> tuple[str, list[tuple[str, float, str]]]:
        """The query model and the (external_id, score, model) of the top ``k`` for one image: the
        route's one call. One view of the index serves both halves, so the embeddings and the
        plan they are searched with come from the same moment (and the view is taken once)."""
        self.require_ready()
        view = self._index.view()
        model, embeddings = encode(self.encoders, view, data, self._settings)
        return model, self._search(view, embeddings, k, model)

    def encode_query(self, data: bytes) -> tuple[str, Embeddings]:
        """The query model's name and the embeddings the serving plan needs for one image, from
        one decode of its bytes (a clear 4xx for bad ones)."""
        self.require_ready()
        return encode(self.encoders, self._index.view(), data, self._settings)

    def search_vector(
        self, embeddings: Embeddings | np.ndarray, k: int, query_model: str | None = None
    ) -> list[tuple[str, float, str]]:
        """(external_id, score, model) of the top ``k`` for the first query, merged over segments
        as the serving plan says. A bare array is the query model's embedding (no plan)."""
        return self._search(self._index.view(), embeddings, k, query_model)

    def _search(
        self, view: IndexView, embeddings: Embeddings | np.ndarray, k: int, query_model: str | None
    ) -> list[tuple[str, float, str]]:
        model = query_model or view.query_model or ""
        if isinstance(embeddings, np.ndarray):
            embeddings = {model: embeddings}
        query_plan = plan_for(view, embeddings, model)
        if query_plan is None:
            return []
        return [(h.external_id, h.score, h.model) for h in self._index.search(view, query_plan, k)]

    def model_of(self, item_id: int) -> str | None:
        return self._index.model_of(item_id)

    def catch_up(self, changes: Iterable[Change]) -> None:
        """Read-your-writes: the changes a request's unit of work committed, reflected here before
        it answers (``service.indexport.UnitOfWork.changes``)."""
        self._index.catch_up(changes)

    def status(self) -> IndexStatus:
        return self._index.status()

    # -- the operator's and the tests' surface ---------------------------------------------------
    def load(self) -> None:
        """Load now, in this thread (``start`` loads in the background)."""
        self._index.load()

    def reload(self) -> None:
        """Rebuild from SQL."""
        self._index.reload()

    def poll(self, block_ms: int | None = None) -> int:
        """Apply what changed since; -1 when it reloaded instead."""
        return self._index.poll(block_ms)

    def items(self) -> dict[int, str]:
        """Every item in the index and its segment (O(N))."""
        return self._index.items()
