"""The write side of an index backend (:class:`ChangePublisher`), its in-process replicated
adapter (:class:`LogPublisher`), and the factory that picks one by ``HOTREFRESH_INDEX_BACKEND``.

The setting names the backend: ``flat``, ``ivf``, ``gpu`` and ``auto`` are kinds of the
in-process replicated index (each API replica follows the index log into its own
``MixedIndex`` of that kind). A shared external store adds its own value (``milvus``) and its
branch in :func:`publisher_for` and in ``service.api.serving.backends.serving_index_for``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import redis as redis_lib

from service import indexlog
from service.indexport.changes import Change
from service.settings import Settings

IN_PROCESS = ("auto", "flat", "ivf", "gpu")  # HOTREFRESH_INDEX_BACKEND values served by replicas

# Published late, these could act on a state that has moved on since (a replica's rollback
# restores the parked vectors of its day); a full reload from SQL is right whatever happened since.
LATE_AS_RESET = ("rollback", "commit", "reset")


class ChangePublisher(Protocol):
    """Makes changes already committed to SQL visible to searches.

    ``publish`` raises when it could not (the store or Redis away): the caller keeps the changes
    staged and :func:`service.indexport.relay` tries again, so it must be idempotent (SQL, read
    again, decides the result). ``late`` marks changes the relay publishes after their writer's
    moment: a backend may need to treat those differently (see :data:`LATE_AS_RESET`)."""

    def publish(self, changes: Sequence[Change], *, late: bool = False) -> None: ...


class LogPublisher:
    """In-process, replicated: one index-log entry per change (XADD); every API replica's
    follower applies it to its own index (``service.api.serving.replica``)."""

    def __init__(self, settings: Settings, redis: redis_lib.Redis) -> None:
        self.settings = settings
        self.redis = redis

    def publish(self, changes: Sequence[Change], *, late: bool = False) -> None:
        reset = False
        for change in changes:
            if late and change.op in LATE_AS_RESET:
                reset = True
            else:
                indexlog.append(self.redis, self.settings, change.op, change.model, change.ids)
        if reset:
            indexlog.append(self.redis, self.settings, "reset")


def publisher_for(settings: Settings, redis: redis_lib.Redis) -> ChangePublisher:
    """The publisher of the configured backend."""
    if settings.index_backend in IN_PROCESS:
        return LogPublisher(settings, redis)
    if settings.index_backend == "milvus":
        from service.indexport.milvus import MilvusPublisher  # pymilvus only where it is used

        return MilvusPublisher(settings)
    raise ValueError(f"no index backend {settings.index_backend!r}; expected one of {(*IN_PROCESS, 'milvus')}")
