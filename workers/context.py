"""What a worker process keeps between tasks."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import redis as redis_lib

from service import keys
from service.imagestore import ImageStore, image_store_for
from service.registry import EncoderCache
from service.settings import Settings


@dataclass
class WorkerContext:
    """What a worker process keeps between tasks: one Redis client, the image store and the
    loaded encoders (each checkpoint read once per process)."""

    settings: Settings
    redis: redis_lib.Redis
    images: ImageStore
    encoders: EncoderCache = field(default_factory=EncoderCache)

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerContext:
        redis = redis_lib.Redis.from_url(settings.effective_redis_url)
        return cls(settings, redis, image_store_for(settings), EncoderCache(settings.device, warm=True))

    @property
    def url(self) -> str:
        return self.settings.sqlalchemy_url

    def heartbeat(self, upgrade_id: int) -> None:
        self.redis.set(
            keys.drain_alive(self.settings, upgrade_id), str(time.time()), ex=keys.liveness_ttl(self.settings)
        )
