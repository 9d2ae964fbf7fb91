"""One backfill batch, stage by stage: lease and load (:func:`lease_and_load`), encode
(:func:`encode_batch`), write (:func:`write_batch`: one unit of work, whose move is published
after its SQL commit, then the ack). ``workers.drain`` runs the three stages side by side.

Failure semantics (docs/design.md, invariant 3): a process killed anywhere in here loses
nothing. Ids leased but not acked come back when their lease expires; a batch that committed but
was not acked is replayed, and replaying it is a no-op in SQL (see
``service.repositories.upgrades.record_encoded``).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from models.runtime import EncodeJob
from service.db.session import read_scope, session_scope
from service.indexport import Change, unit_of_work
from service.metrics import BACKFILL_BATCH_SECONDS, BACKFILL_ITEMS
from service.queue import BackfillQueue
from service.repositories import items as item_repo
from service.repositories import upgrades
from service.throttle import BURST_BATCHES, Throttle
from service.upgrade.images import load_pixels
from service.upgrade.progress import window_loader
from workers.context import WorkerContext

log = logging.getLogger(__name__)


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
THROTTLED = "throttled"  # lease_and_load's answer when the throttle's tokens did not come in time


def lease_and_load(
    ctx: WorkerContext,
    queue: BackfillQueue,
    batch_size: int,
    to_model: str,
    decoders: Executor | None = None,
    throttle: Throttle | None = None,
    until: float = math.inf,
) -> Leased | str | None:
    """Take the batch's tokens from the upgrade's ``throttle`` (waiting for them until ``until``,
    on the throttle's clock: ``time.monotonic``), then lease a batch and load its pixels (with
    ``decoders``, the pool of ``decode_threads - 1`` threads, when the settings ask for more
    than one).

    The tokens come first so that no lease is held while waiting for them (a lease held idle
    would only delay its items and could expire); tokens of ids the queue did not have go back.
    Unthrottled, the bucket costs one Redis round trip per batch. The queue's Redis window is
    topped up from SQL before the lease when it ran low (one ZCARD otherwise)."""
    taken, burst = 0, BURST_BATCHES * batch_size  # tokens this batch took from a limited throttle
    if throttle is not None:
        grant = throttle.acquire(batch_size, burst, lambda: _rate_of(ctx, queue.upgrade_id), until)
        if grant is None:
            return THROTTLED
        taken = batch_size if grant.rate is not None else 0
    queue.top_up(window_loader(ctx.settings, queue.upgrade_id), need=batch_size)
    ids = queue.lease(batch_size, ctx.settings.lease_seconds)
    if throttle is not None and taken > len(ids):
        throttle.give_back(taken - len(ids), burst)
    if not ids:
        return BLOCKED if queue.blocked else None
    with read_scope(ctx.url) as s:
        keys = item_repo.image_keys(s, ids)
        model = ctx.encoders.get(s, to_model)
    meta = model.meta
    gone = [i for i in ids if i not in keys]  # deleted from the gallery after being queued
    if gone:
        queue.remove(gone)
    present = [i for i in ids if i in keys]
    pixels, ok, load_errors = load_pixels(
        ctx.images,
        [keys[i] for i in present],
        meta,
        ctx.settings.max_image_pixels,
        decoders,
        ctx.settings.decode_threads,
    )
    ok_ids = [present[k] for k in ok]
    errors = {present[k]: err for k, err in load_errors.items()}
    job = None
    if ok_ids:
        # Queued now, behind the batch the encoder is on: the encoder's core never waits for
        # this process's Python threads (models/runtime.py). A failure to start it is not the
        # batch's failure: the encoder thread then encodes it itself and records any error.
        try:
            job = model.submit_tensor(pixels)
        except Exception:
            log.warning("upgrade batch: could not start encoding in the background", exc_info=True)
    return Leased(ids=ok_ids, pixels=pixels, errors=errors, all_ids=present, job=job)


def _rate_of(ctx: WorkerContext, upgrade_id: int) -> float | None:
    """The throttle's rate as SQL holds it (when Redis has lost or let go of its copy)."""
    with read_scope(ctx.url) as s:
        return upgrades.throttle_of(s, upgrade_id)


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
        except Exception as exc:  # the whole batch failed to encode
            log.exception("upgrade %s: encoding a batch of %d failed", upgrade_id, len(batch.ids))
            errors.update({i: f"encode failed: {type(exc).__name__}: {exc}" for i in batch.ids})
    return Encoded(batch, vectors, errors)


def write_batch(ctx: WorkerContext, upgrade_id: int, to_model: str, enc: Encoded, queue: BackfillQueue) -> BatchResult:
    """One unit of work (the move published after the SQL commit), then the ack; errors count an
    attempt per item.

    The unit of work runs without the outbox (``outbox=False``): the lease is this batch's outbox.
    The ack comes only after the publish returns, so a worker killed, or a publish that fails,
    between the commit and the ack leaves the ids leased; they are redone when the lease expires
    and published again (the SQL replay is a no-op, the publish idempotent), and a pause
    republishes the landed ones at once (``control._relog_landed_leases``). An outbox row per
    batch would repeat that guarantee at the cost of one more write transaction per batch."""
    result = BatchResult()
    if enc.vectors is not None:
        with unit_of_work(ctx.settings, ctx.redis, outbox=False) as uow:
            outcome = upgrades.record_encoded(uow.session, upgrade_id, to_model, enc.batch.ids, enc.vectors)
            if outcome.moved:
                uow.record(Change.move(to_model, outcome.moved))
        result.done, result.moved = outcome.newly_done, len(outcome.moved)
        result.state, result.progress = outcome.state, outcome.progress
        queue.ack(enc.batch.ids)
    if enc.errors:
        with session_scope(ctx.url) as s:
            failure = upgrades.record_errors(s, upgrade_id, enc.errors, ctx.settings.max_attempts)
        queue.release(failure.retry)
        queue.ack(failure.failed)
        # Ids no longer pending (deleted, or the upgrade stopped): drop their lease.
        queue.ack([i for i in enc.errors if i not in failure.retry and i not in failure.failed])
        result.failed, result.retried = len(failure.failed), len(failure.retry)
        for i in failure.failed:
            log.warning(
                "upgrade %s: item %s failed %d times: %s", upgrade_id, i, ctx.settings.max_attempts, enc.errors[i]
            )
    label = str(upgrade_id)
    if result.done:
        BACKFILL_ITEMS.labels(label, "done").inc(result.done)
    if result.failed:
        BACKFILL_ITEMS.labels(label, "failed").inc(result.failed)
    BACKFILL_BATCH_SECONDS.observe(time.perf_counter() - enc.batch.loaded_at)
    return result


def land_batch(ctx: WorkerContext, upgrade_id: int, to_model: str, batch: Leased, queue: BackfillQueue) -> BatchResult:
    """Encode and write one batch, synchronously."""
    return write_batch(ctx, upgrade_id, to_model, encode_batch(ctx, upgrade_id, to_model, batch), queue)
