"""Which read adapter of the serving index this process uses, by ``HOTREFRESH_INDEX_BACKEND``
(the write side's twin is ``service.indexport.publishers.publisher_for``). A new backend adds its
value to the setting, an adapter module beside ``replica.py``, and one branch here and there."""

from __future__ import annotations

from collections.abc import Callable

import redis as redis_lib

from service.api.serving.port import ServingIndex
from service.api.serving.replica import Replica
from service.indexport.publishers import IN_PROCESS
from service.settings import Settings


def serving_index_for(
    settings: Settings, redis: redis_lib.Redis, *, on_retired: Callable[[str], None] | None = None
) -> ServingIndex:
    """``on_retired(model)`` is called once a committed upgrade has dropped ``model`` from the
    index, so its encoder can be released."""
    if settings.index_backend in IN_PROCESS:
        return Replica(settings, redis, on_retired=on_retired)
    if settings.index_backend == "milvus":
        from service.api.serving.milvus import MilvusIndex  # pymilvus only where it is used

        return MilvusIndex(settings, on_retired=on_retired)
    raise ValueError(f"no index backend {settings.index_backend!r}; expected one of {(*IN_PROCESS, 'milvus')}")
