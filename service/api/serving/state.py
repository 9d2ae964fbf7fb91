"""What one API process holds of the gallery: its replica of the mixed index, the id -> external
id map, the query model, the loaded encoders, and its position in the index log.

The jobs around it live beside it, one module each: ``loading`` (from SQL or a snapshot),
``applying`` (index-log entries and a request's own writes), ``follower`` (the thread that tails
the log and relays the outbox), ``query`` (the search path).
"""

from __future__ import annotations

import threading

import redis as redis_lib

from service.index import MixedIndex
from service.metrics import GALLERY_VECTORS
from service.registry import EncoderCache
from service.settings import Settings
from service.upgrade.plans import ServingPlan


def new_index(settings: Settings) -> MixedIndex:
    return MixedIndex.from_settings(settings)


class ReplicaState:
    def __init__(self, settings: Settings, redis: redis_lib.Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.encoders = EncoderCache(settings.device)
        self.index = new_index(settings)
        self.external_ids: dict[int, str] = {}
        self.query_model: str | None = None
        self.plan: ServingPlan | None = None  # the upgrade's query plan (service.upgrade.plans); None: none
        self.ready = threading.Event()
        self.last_id = "0-0"  # last index-log entry reflected in this replica
        self.ordinal = 0  # how many entries had ever been appended up to and including last_id
        self.epoch: str | None = None
        self.reloads = 0  # full loads from SQL (start-up included)
        self.loaded_from: str | None = None  # "sql" or "snapshot", for operators and tests
        # Held by every change to the replica: loads, applied entries, a request's own write.
        self.apply_lock = threading.Lock()
        self._known_models: set[str] = set()

    @property
    def url(self) -> str:
        return self.settings.sqlalchemy_url

    def update_gauges(self) -> None:
        counts = self.index.counts()
        for model in self._known_models - set(counts):
            GALLERY_VECTORS.labels(model=model).set(0)
        for model, n in counts.items():
            GALLERY_VECTORS.labels(model=model).set(n)
        self._known_models |= set(counts)
