"""The backfill itself, as plain functions the Celery tasks call (and tests call without Celery).

One drain call runs for up to ``drain_budget_seconds``: lease the top-B ids, load and decode
their images, encode them with the new model, land vectors + active model + task status in ONE
SQL transaction, append ``move`` to the index log, then ack the lease. Loading the next batch
overlaps encoding the current one (a one-slot prefetch thread), because image reads and
decoding are pure overhead next to the encoder (benchmark B1).

Failure semantics (DESIGN.md invariant 3): a process killed anywhere in here loses nothing. Ids
leased but not acked come back when their lease expires; a batch that committed but was not
acked is replayed, and replaying it is a no-op in SQL (see ``store.record_encoded``).
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import redis as redis_lib
from PIL import Image
from sqlalchemy import select

from service import indexlog
from service.db.schema import GalleryItem
from service.db.session import session_scope
from service.imagestore import ImageStore, image_store_for
from service.metrics import BACKFILL_BATCH_SECONDS, BACKFILL_ITEMS, BACKFILL_PROGRESS, BACKFILL_QUEUE_DEPTH
from service.registry import EncoderCache
from service.settings import Settings
from service.upgrade import progress, store
from service.upgrade.images import load_images
from service.upgrade.states import RUNNING
from workers.queue import BackfillQueue

log = logging.getLogger(__name__)


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
        return cls(settings, redis, image_store_for(settings), EncoderCache(settings.device))

    @property
    def url(self) -> str:
        return self.settings.sqlalchemy_url

    def alive_key(self, upgrade_id: int) -> str:
        return self.settings.redis_key("upgrade", upgrade_id, "drain-alive")

    def heartbeat(self, upgrade_id: int) -> None:
        ttl = max(5, int(3 * self.settings.drain_budget_seconds))
        self.redis.set(self.alive_key(upgrade_id), str(time.time()), ex=ttl)


@dataclass
class Leased:
    """One leased batch, loaded: ids whose image decoded, their images, and per-id errors."""

    ids: list[int]
    images: list[Image.Image]
    errors: dict[int, str]
    all_ids: list[int]


BLOCKED = "blocked"  # lease_and_load's answer while a checkpoint barrier is up


def lease_and_load(ctx: WorkerContext, queue: BackfillQueue, batch_size: int) -> Leased | str | None:
    ids = queue.lease(batch_size, ctx.settings.lease_seconds)
    if not ids:
        return BLOCKED if queue.blocked else None
    with session_scope(ctx.url) as s:
        keys = dict(s.execute(select(GalleryItem.id, GalleryItem.image_key).where(GalleryItem.id.in_(ids)))
                    .tuples().all())
    gone = [i for i in ids if i not in keys]  # deleted from the gallery after being queued
    if gone:
        queue.remove(gone)
    present = [i for i in ids if i in keys]
    images, errors = load_images(ctx.images, [keys[i] for i in present])
    ok = [(i, img) for i, img, err in zip(present, images, errors, strict=True) if err is None]
    return Leased(
        ids=[i for i, _ in ok], images=[img for _, img in ok],
        errors={i: err for i, err in zip(present, errors, strict=True) if err is not None},
        all_ids=present,
    )


@dataclass
class BatchResult:
    done: int = 0
    failed: int = 0
    retried: int = 0
    moved: int = 0


def land_batch(
    ctx: WorkerContext, upgrade_id: int, to_model: str, batch: Leased, queue: BackfillQueue
) -> BatchResult:
    """Encode, write, log, ack. Errors (decode or encode) count an attempt per item."""
    result = BatchResult()
    errors = dict(batch.errors)
    vectors: np.ndarray | None = None
    if batch.ids:
        try:
            with session_scope(ctx.url) as s:
                model = ctx.encoders.get(s, to_model)
            vectors = model.embed_images(batch.images)
        except Exception as exc:  # noqa: BLE001 - the whole batch failed to encode
            log.exception("upgrade %s: encoding a batch of %d failed", upgrade_id, len(batch.ids))
            errors.update({i: f"encode failed: {type(exc).__name__}: {exc}" for i in batch.ids})
    if vectors is not None:
        with session_scope(ctx.url) as s:
            up = store.get_upgrade(s, upgrade_id)
            outcome = store.record_encoded(s, up, batch.ids, vectors)
        if outcome.moved:
            indexlog.append(ctx.redis, ctx.settings, "move", to_model, outcome.moved)
        result.done, result.moved = outcome.newly_done, len(outcome.moved)
        queue.ack(batch.ids)
    if errors:
        with session_scope(ctx.url) as s:
            up = store.get_upgrade(s, upgrade_id)
            failure = store.record_errors(s, up, errors, ctx.settings.max_attempts)
        queue.release(failure.retry)
        queue.ack(failure.failed)
        # Ids no longer pending (deleted, or the upgrade stopped): drop their lease.
        queue.ack([i for i in errors if i not in failure.retry and i not in failure.failed])
        result.failed, result.retried = len(failure.failed), len(failure.retry)
        for i in failure.failed:
            log.warning("upgrade %s: item %s failed %d times: %s", upgrade_id, i, ctx.settings.max_attempts,
                        errors[i])
    label = str(upgrade_id)
    if result.done:
        BACKFILL_ITEMS.labels(label, "done").inc(result.done)
    if result.failed:
        BACKFILL_ITEMS.labels(label, "failed").inc(result.failed)
    return result


def _upgrade_state(ctx: WorkerContext, upgrade_id: int) -> tuple[str | None, str, int, int, int]:
    with session_scope(ctx.url) as s:
        up = store.get_upgrade(s, upgrade_id)
        if up is None:
            return None, "", 0, 0, 0
        return up.state, up.to_model, up.batch_size, up.done, up.total


def drain(ctx: WorkerContext, upgrade_id: int, budget_s: float | None = None) -> str:
    """Backfill batches until the budget is spent. Returns what the caller should do next:
    ``"continue"`` (more work: run again now), ``"wait"`` (nothing to lease but others' leases are
    out: run again shortly), ``"stop"`` (not running any more, or completed)."""
    budget_s = ctx.settings.drain_budget_seconds if budget_s is None else budget_s
    deadline = time.monotonic() + budget_s
    queue = BackfillQueue(ctx.redis, ctx.settings, upgrade_id)
    label = str(upgrade_id)
    state, to_model, batch_size, done, total = _upgrade_state(ctx, upgrade_id)
    if state != RUNNING:
        return "stop"
    ctx.heartbeat(upgrade_id)
    with ThreadPoolExecutor(1, thread_name_prefix="prefetch") as pool:
        pending: Future[Leased | str | None] | None = pool.submit(lease_and_load, ctx, queue, batch_size)

        def give_back_prefetched() -> None:
            nonlocal pending
            if pending is not None:
                leftover = pending.result()
                pending = None
                if isinstance(leftover, Leased):
                    queue.release(leftover.all_ids)

        try:
            while pending is not None:
                batch = pending.result()
                pending = None
                if batch == BLOCKED:  # a checkpoint is measuring: come back shortly
                    return "wait"
                if batch is None:
                    if queue.leased() == 0:
                        outcome = progress.try_complete(ctx.settings, ctx.redis, upgrade_id)
                        if outcome == "completed":
                            return "stop"
                        if outcome == "requeued":
                            pending = pool.submit(lease_and_load, ctx, queue, batch_size)
                            continue
                    return "wait"
                t0 = time.perf_counter()
                more = time.monotonic() < deadline
                if more:  # overlap: the next batch loads while this one encodes
                    pending = pool.submit(lease_and_load, ctx, queue, batch_size)
                land_batch(ctx, upgrade_id, to_model, batch, queue)
                BACKFILL_BATCH_SECONDS.observe(time.perf_counter() - t0)
                ctx.heartbeat(upgrade_id)
                state, _, _, done, total = _upgrade_state(ctx, upgrade_id)
                frac = 1.0 if total <= 0 else min(1.0, done / total)
                BACKFILL_PROGRESS.labels(label).set(frac)
                BACKFILL_QUEUE_DEPTH.labels(label).set(queue.depth())
                step = progress.claim_checkpoint(ctx.settings, ctx.redis, upgrade_id, frac)
                if step is not None:
                    # Our own prefetched lease would hold the cut open. Land it rather than hand
                    # it back: releasing it while others land later batches would leave a hole in
                    # the order, and the cut would no longer be "the first n items".
                    if pending is not None:
                        prefetched, pending = pending.result(), None
                        if isinstance(prefetched, Leased):
                            land_batch(ctx, upgrade_id, to_model, prefetched, queue)
                    progress.checkpoint_at_cut(ctx.settings, ctx.redis, upgrade_id, step)
                    state = _upgrade_state(ctx, upgrade_id)[0]
                    if more and state == RUNNING:
                        pending = pool.submit(lease_and_load, ctx, queue, batch_size)
                if state != RUNNING:
                    return "stop"
            return "continue"
        finally:
            give_back_prefetched()  # a prefetched batch we will not process goes back now
