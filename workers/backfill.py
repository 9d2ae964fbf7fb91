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
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import redis as redis_lib
from sqlalchemy import select

from models.runtime import EncodeJob
from service import indexlog, keys
from service.db.schema import GalleryItem, Upgrade
from service.db.session import read_scope, session_scope
from service.imagestore import ImageStore, image_store_for
from service.metrics import BACKFILL_BATCH_SECONDS, BACKFILL_ITEMS, BACKFILL_PROGRESS, BACKFILL_QUEUE_DEPTH
from service.queue import BackfillQueue
from service.registry import EncoderCache
from service.settings import Settings
from service.upgrade import progress, store
from service.upgrade.images import load_pixels
from service.upgrade.states import RUNNING

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
        return cls(settings, redis, image_store_for(settings), EncoderCache(settings.device, warm=True))

    @property
    def url(self) -> str:
        return self.settings.sqlalchemy_url

    def heartbeat(self, upgrade_id: int) -> None:
        self.redis.set(keys.drain_alive(self.settings, upgrade_id), str(time.time()),
                       ex=keys.liveness_ttl(self.settings))


@dataclass
class Leased:
    """One leased batch, loaded: ids whose image decoded, their pixels at the new model's mode
    and size (uint8, n x C x H x W: the per-image Python work is done here, in the loader
    thread, so the encoder thread only runs tensor code), per-id errors, and the encoding of
    ``pixels``, already queued behind the batch before it (``job``; None if it could not be
    started, and then the encoder thread encodes the batch itself)."""

    ids: list[int]
    pixels: np.ndarray
    errors: dict[int, str]
    all_ids: list[int]
    job: EncodeJob | None = None
    loaded_at: float = field(default_factory=time.perf_counter)  # batch-latency metric


BLOCKED = "blocked"  # lease_and_load's answer while a checkpoint barrier is up


def lease_and_load(
    ctx: WorkerContext, queue: BackfillQueue, batch_size: int, to_model: str
) -> Leased | str | None:
    ids = queue.lease(batch_size, ctx.settings.lease_seconds)
    if not ids:
        return BLOCKED if queue.blocked else None
    with read_scope(ctx.url) as s:
        keys = dict(s.execute(select(GalleryItem.id, GalleryItem.image_key).where(GalleryItem.id.in_(ids)))
                    .all())
        model = ctx.encoders.get(s, to_model)
    meta = model.meta
    gone = [i for i in ids if i not in keys]  # deleted from the gallery after being queued
    if gone:
        queue.remove(gone)
    present = [i for i in ids if i in keys]
    pixels, ok, load_errors = load_pixels(ctx.images, [keys[i] for i in present], meta)
    ok_ids = [present[k] for k in ok]
    errors = {present[k]: err for k, err in load_errors.items()}
    job = None
    if ok_ids:
        # Queued now, behind the batch the encoder is on: the encoder's core never waits for
        # this process's Python threads (models/runtime.py). A failure to start it is not the
        # batch's failure: the encoder thread then encodes it itself and records any error.
        try:
            job = model.submit_tensor(pixels)
        except Exception:  # noqa: BLE001
            log.warning("upgrade batch: could not start encoding in the background", exc_info=True)
    return Leased(ids=ok_ids, pixels=pixels, errors=errors, all_ids=present, job=job)


@dataclass
class BatchResult:
    done: int = 0
    failed: int = 0
    retried: int = 0
    moved: int = 0
    state: str | None = None  # the upgrade's state and (done, total) as the batch's transaction
    progress: tuple[int, int] | None = None  # left them; None when the batch did not land


@dataclass
class Encoded:
    """A leased batch after the encoder: vectors for ``batch.ids`` (None if encoding failed) and
    every id that failed this attempt with its error."""

    batch: Leased
    vectors: np.ndarray | None
    errors: dict[int, str]


def encode_batch(ctx: WorkerContext, upgrade_id: int, to_model: str, batch: Leased) -> Encoded:
    """The batch's vectors: collected from its background job, or computed here."""
    errors = dict(batch.errors)
    vectors: np.ndarray | None = None
    if batch.ids:
        try:
            if batch.job is not None:
                vectors = batch.job.result()
            else:
                model = ctx.encoders.peek(to_model)
                if model is None:
                    with read_scope(ctx.url) as s:
                        model = ctx.encoders.get(s, to_model)
                vectors = model.embed_tensor(batch.pixels)
        except Exception as exc:  # noqa: BLE001 - the whole batch failed to encode
            log.exception("upgrade %s: encoding a batch of %d failed", upgrade_id, len(batch.ids))
            errors.update({i: f"encode failed: {type(exc).__name__}: {exc}" for i in batch.ids})
    return Encoded(batch, vectors, errors)


def write_batch(ctx: WorkerContext, upgrade_id: int, to_model: str, enc: Encoded, queue: BackfillQueue) -> BatchResult:
    """One SQL transaction, then the index log, then the ack; errors count an attempt per item."""
    result = BatchResult()
    if enc.vectors is not None:
        with session_scope(ctx.url) as s:
            outcome = store.record_encoded(s, upgrade_id, to_model, enc.batch.ids, enc.vectors)
        if outcome.moved:
            indexlog.append(ctx.redis, ctx.settings, "move", to_model, outcome.moved)
        result.done, result.moved = outcome.newly_done, len(outcome.moved)
        result.state, result.progress = outcome.state, outcome.progress
        queue.ack(enc.batch.ids)
    if enc.errors:
        with session_scope(ctx.url) as s:
            failure = store.record_errors(s, upgrade_id, enc.errors, ctx.settings.max_attempts)
        queue.release(failure.retry)
        queue.ack(failure.failed)
        # Ids no longer pending (deleted, or the upgrade stopped): drop their lease.
        queue.ack([i for i in enc.errors if i not in failure.retry and i not in failure.failed])
        result.failed, result.retried = len(failure.failed), len(failure.retry)
        for i in failure.failed:
            log.warning("upgrade %s: item %s failed %d times: %s", upgrade_id, i, ctx.settings.max_attempts,
                        enc.errors[i])
    label = str(upgrade_id)
    if result.done:
        BACKFILL_ITEMS.labels(label, "done").inc(result.done)
    if result.failed:
        BACKFILL_ITEMS.labels(label, "failed").inc(result.failed)
    BACKFILL_BATCH_SECONDS.observe(time.perf_counter() - enc.batch.loaded_at)
    return result


def land_batch(
    ctx: WorkerContext, upgrade_id: int, to_model: str, batch: Leased, queue: BackfillQueue
) -> BatchResult:
    """Encode and write one batch, synchronously."""
    return write_batch(ctx, upgrade_id, to_model, encode_batch(ctx, upgrade_id, to_model, batch), queue)


def lower_thread_priority(extra_nice: int) -> None:
    """Make the calling thread nicer by ``extra_nice`` (Linux only, where niceness is per thread).

    Why: a drain's loader and writer stages are about half busy each and the encoder stage is
    busy all the time; when both helpers and the encoder are runnable on two cores, the scheduler
    used to preempt the encoder for them (benchmark B1: the encoder thread got ~0.94 of a core,
    with 100-250 involuntary switches a second). A nicer helper still runs at once on an idle
    core and can never be starved for long (the encoder blocks on it when it runs dry), but it
    yields a busy core to the encoder. On other systems ``setpriority`` would renice the whole
    process, so nothing is done there.
    """
    if extra_nice <= 0 or not sys.platform.startswith("linux"):
        return
    tid = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + extra_nice))
    except OSError:  # a sandbox that forbids it: the pipeline works the same, only less fairly
        log.debug("could not lower the priority of thread %s", tid, exc_info=True)


def _upgrade_state(ctx: WorkerContext, upgrade_id: int) -> tuple[str | None, str, int, int, int]:
    with read_scope(ctx.url) as s:
        row = s.execute(
            select(Upgrade.state, Upgrade.to_model, Upgrade.batch_size, Upgrade.done, Upgrade.total)
            .where(Upgrade.id == upgrade_id)
        ).first()
    return (None, "", 0, 0, 0) if row is None else tuple(row)  # type: ignore[return-value]


def drain(ctx: WorkerContext, upgrade_id: int, budget_s: float | None = None) -> str:
    """Backfill batches until the budget is spent. Returns what the caller should do next:
    ``"continue"`` (more work: run again now), ``"wait"`` (nothing to lease now: others hold the
    last leases, or a checkpoint is measuring: run again shortly), ``"stop"`` (not running any
    more, or completed).

    Three stages overlap: a loader thread leases and decodes batch k+1, this thread encodes batch
    k, a writer thread lands batch k-1 (SQL, index log, ack). Writes stay in lease order, one at
    a time, so the items on the new model are always a prefix of the backfill order plus what is
    in flight.
    """
    budget_s = ctx.settings.drain_budget_seconds if budget_s is None else budget_s
    deadline = time.monotonic() + budget_s
    queue = BackfillQueue(ctx.redis, ctx.settings, upgrade_id)
    label = str(upgrade_id)
    state, to_model, batch_size, _, _ = _upgrade_state(ctx, upgrade_id)
    if state != RUNNING:
        return "stop"
    ctx.heartbeat(upgrade_id)
    beat = -1e9  # the first settle beats and sets the depth gauge
    seen_step = 0  # the checkpoint step last tried here; a claim is tried once per new step
    measured = progress.has_probes(ctx.settings, upgrade_id)
    helper = {"initializer": lower_thread_priority, "initargs": (ctx.settings.helper_nice,)}
    with ThreadPoolExecutor(1, thread_name_prefix="load", **helper) as loader, \
            ThreadPoolExecutor(1, thread_name_prefix="write", **helper) as writer:
        pending: Future[Leased | str | None] | None = loader.submit(lease_and_load, ctx, queue, batch_size, to_model)
        writing: Future[BatchResult] | None = None

        def land_prefetched() -> None:
            nonlocal pending
            if pending is not None:
                prefetched, pending = pending.result(), None
                if isinstance(prefetched, Leased):
                    land_batch(ctx, upgrade_id, to_model, prefetched, queue)

        def settle(current: Encoded | None) -> tuple[str | None, bool]:
            """Wait for the write in flight, then look at the upgrade. When a checkpoint is due,
            first land everything this process holds (``current`` and the prefetched batch:
            landed, not handed back, so the cut stays a prefix of the order), then measure.
            Returns (state, whether ``current`` was written here)."""
            nonlocal writing, beat, seen_step
            landed = None
            if writing is not None:
                landed = writing.result()
                writing = None
            # Once a second, not after every batch: the heartbeat key lives >= 5 s, and the
            # depth gauge is scraped every few seconds (each is a Redis round trip on this thread).
            periodic = current is None or time.monotonic() - beat >= 1.0  # None: between batches
            if periodic:
                ctx.heartbeat(upgrade_id)
                beat = time.monotonic()
            if landed is not None and landed.progress is not None and landed.state is not None:
                # The write just landed read these in its own transaction, off this thread.
                st, (done, total) = landed.state, landed.progress
            else:
                st, _, _, done, total = _upgrade_state(ctx, upgrade_id)
            frac = 1.0 if total <= 0 else min(1.0, done / total)
            BACKFILL_PROGRESS.labels(label).set(frac)
            if periodic:
                BACKFILL_QUEUE_DEPTH.labels(label).set(queue.depth())
            step = None
            if (due := progress.step_due(ctx.settings, frac)) != seen_step:  # a new step: try to claim it
                seen_step = due
                step = progress.claim_checkpoint(ctx.settings, ctx.redis, upgrade_id, frac)
            if step is None:
                return st, False
            if not measured:
                # No probes: the point records progress only, so there is no cut to make and
                # nothing in flight needs landing first.
                progress.checkpoint_at_cut(ctx.settings, ctx.redis, upgrade_id, step)
                return st, False
            if current is not None:
                write_batch(ctx, upgrade_id, to_model, current, queue)
            land_prefetched()
            progress.checkpoint_at_cut(ctx.settings, ctx.redis, upgrade_id, step)
            return _upgrade_state(ctx, upgrade_id)[0], current is not None

        try:
            while pending is not None:
                batch = pending.result()
                pending = None
                if not isinstance(batch, Leased):
                    st, _ = settle(None)
                    if batch == BLOCKED:  # a checkpoint is measuring: come back shortly
                        return "wait"
                    if st != RUNNING:
                        return "stop"
                    if queue.leased() == 0:
                        outcome = progress.try_complete(ctx.settings, ctx.redis, upgrade_id)
                        if outcome == "completed":
                            return "stop"
                        if outcome == "requeued":
                            pending = loader.submit(lease_and_load, ctx, queue, batch_size, to_model)
                            continue
                    return "wait"
                if time.monotonic() < deadline:  # overlap: the next batch loads while this one encodes
                    pending = loader.submit(lease_and_load, ctx, queue, batch_size, to_model)
                current = encode_batch(ctx, upgrade_id, to_model, batch)
                st, written = settle(current)
                if not written:
                    writing = writer.submit(write_batch, ctx, upgrade_id, to_model, current, queue)
                if st != RUNNING:
                    return "stop"
                if written and time.monotonic() < deadline:
                    # A checkpoint landed everything this process held: carry on in this call
                    # rather than end it and wait for Celery to hand out the next one.
                    pending = loader.submit(lease_and_load, ctx, queue, batch_size, to_model)
            st, _ = settle(None)
            return "continue" if st == RUNNING else "stop"
        finally:
            if writing is not None:
                writing.result()  # a batch already encoded is landed, not wasted
            if pending is not None:  # a prefetched batch we will not process goes back now
                leftover = pending.result()
                if isinstance(leftover, Leased):
                    queue.release(leftover.all_ids)
