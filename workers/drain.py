"""The drain: what one drain task does with its budget. It backfills batches until the budget
is spent and says what the task should do next (:class:`Outcome`).

Three stages overlap: a loader thread leases and decodes batch k+1 (with ``decode_threads - 1``
more threads beside it, when set), the drain's own thread encodes batch k, a writer thread
lands batch k-1 (``workers.batch``). Loading the next batch
overlaps encoding the current one because image reads and decoding are pure overhead next to
the encoder (benchmark B1). Writes stay in lease order, one at a time, so the items on the new
model are always a prefix of the backfill order plus what is in flight.

Throttle (``service.throttle``): the loader takes a batch's tokens from the upgrade's bucket,
shared by every worker, before it leases the batch, waiting in the loader thread at most until the
drain's deadline (the encoder and the writer go on meanwhile); a drain whose budget ran out
waiting ends, and its successor waits on. A checkpoint this drain claims meanwhile waits for that
prefetch too (at most the budget) before it lands it and measures.

Checkpoints (``service.upgrade.checkpoints``): when progress reaches a new checkpoint step and
this drain claims it, the drain first lands everything it holds (the batch just encoded and the
one prefetched: landed, not handed back, so the cut stays a prefix of the order), then measures
at a consistent cut while the queue's barrier keeps every other worker from leasing.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from enum import StrEnum

from service.db.session import read_scope
from service.metrics import BACKFILL_ITEMS, BACKFILL_PROGRESS, BACKFILL_QUEUE_DEPTH, remove_upgrade
from service.queue import BackfillQueue
from service.repositories import upgrades
from service.states import BACKFILL_OVER, RUNNING
from service.throttle import Throttle
from service.upgrade import checkpoints, progress
from workers.batch import (
    BLOCKED,
    THROTTLED,
    BatchResult,
    Encoded,
    Leased,
    encode_batch,
    land_batch,
    lease_and_load,
    write_batch,
)
from workers.context import WorkerContext

log = logging.getLogger(__name__)


class Outcome(StrEnum):
    CONTINUE = "continue"  # more work: run the next drain now
    WAIT = "wait"  # nothing to lease now (others hold the last leases, or a checkpoint measures): shortly
    STOP = "stop"  # the upgrade is not running any more, or it completed


HEARTBEAT_EVERY_S = 1.0  # heartbeat and queue-depth gauge: at most this often (Redis round trips)


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


class Drain:
    """One drain of one upgrade: construct, then :meth:`run` once."""

    def __init__(self, ctx: WorkerContext, upgrade_id: int, budget_s: float | None = None) -> None:
        self.ctx = ctx
        self.upgrade_id = int(upgrade_id)
        self.budget_s = ctx.settings.drain_budget_seconds if budget_s is None else budget_s
        self.queue = BackfillQueue(ctx.redis, ctx.settings, self.upgrade_id)
        self.throttle = Throttle(ctx.redis, ctx.settings, self.upgrade_id)
        self.label = str(self.upgrade_id)
        self.to_model = ""
        self.batch_size = 0
        self.deadline = 0.0
        self.beat = -1e9  # the first settle beats and sets the depth gauge
        self.seen_step = 0  # the checkpoint step last tried here; a claim is tried once per new step
        self.measured = False  # whether checkpoints measure anything (the upgrade has probes)
        self.pending: Future[Leased | str | None] | None = None  # the batch the loader prepares
        self.writing: Future[BatchResult] | None = None  # the batch the writer lands
        self._loader: ThreadPoolExecutor | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._decoders: ThreadPoolExecutor | None = None  # decode_threads - 1 of them, when more than one

    # --- the loop ----------------------------------------------------------------------------

    def run(self) -> Outcome:
        self.deadline = time.monotonic() + self.budget_s
        st = self._run_state()
        if st.state != RUNNING:
            self._drop_gauges_if_over(st.state)
            return Outcome.STOP
        self.to_model, self.batch_size = st.to_model, st.batch_size
        for status in ("done", "failed", "mapped"):
            # Both series exist at 0 from this process's first drain: a counter series born at 1
            # has no increase, so the dashboard's first failure would never show.
            BACKFILL_ITEMS.labels(self.label, status)
        self.ctx.heartbeat(self.upgrade_id)
        if st.vector_only:  # nothing to lease or encode: the items are mapped at completion
            done = progress.try_complete(self.ctx.settings, self.ctx.redis, self.upgrade_id)
            return Outcome.STOP if done == "completed" else Outcome.WAIT
        self.measured = checkpoints.has_probes(self.ctx.settings, self.upgrade_id)
        nice = (self.ctx.settings.helper_nice,)
        extra = self.ctx.settings.decode_threads - 1
        decoders = (
            ThreadPoolExecutor(extra, "decode", initializer=lower_thread_priority, initargs=nice)
            if extra > 0
            else nullcontext()
        )
        with (
            ThreadPoolExecutor(1, "load", initializer=lower_thread_priority, initargs=nice) as self._loader,
            ThreadPoolExecutor(1, "write", initializer=lower_thread_priority, initargs=nice) as self._writer,
            decoders as self._decoders,
        ):
            self._lease_next()
            try:
                return self._loop()
            finally:
                self._finish()

    def _loop(self) -> Outcome:
        while self.pending is not None:
            batch = self.pending.result()
            self.pending = None
            if not isinstance(batch, Leased):
                outcome = self._nothing_leased(batch)
                if outcome is not None:
                    return outcome
                continue
            if time.monotonic() < self.deadline:  # overlap: the next batch loads while this one encodes
                self._lease_next()
            current = encode_batch(self.ctx, self.upgrade_id, self.to_model, batch)
            state, written = self._settle(current)
            if not written:
                self.writing = self._submit_write(current)
            if state != RUNNING:
                return Outcome.STOP
            if written and time.monotonic() < self.deadline:
                # A checkpoint landed everything this drain held: carry on in this call rather
                # than end it and wait for Celery to hand out the next one.
                self._lease_next()
        state, _ = self._settle(None)
        return Outcome.CONTINUE if state == RUNNING else Outcome.STOP

    def _nothing_leased(self, answer: str | None) -> Outcome | None:
        """The loader leased nothing. An outcome, or None after the queue was refilled from SQL
        (the loop goes on with the batch leased from it)."""
        state, _ = self._settle(None)
        if answer == BLOCKED:  # a checkpoint is measuring: come back shortly
            return Outcome.WAIT
        if state != RUNNING:
            return Outcome.STOP
        if answer == THROTTLED:  # the budget ran out waiting for tokens: the successor waits on
            return Outcome.CONTINUE
        if self.queue.leased() == 0:
            done = progress.try_complete(self.ctx.settings, self.ctx.redis, self.upgrade_id)
            if done == "completed":
                return Outcome.STOP
            if done == "requeued":
                self._lease_next()
                return None
        return Outcome.WAIT

    def _finish(self) -> None:
        if self.writing is not None:
            self.writing.result()  # a batch already encoded is landed, not wasted
            self.writing = None
        if self.pending is not None:  # a prefetched batch this drain will not process goes back now
            leftover, self.pending = self.pending.result(), None
            if isinstance(leftover, Leased):
                self.queue.release(leftover.all_ids)

    # --- the stages --------------------------------------------------------------------------

    def _lease_next(self) -> None:
        assert self._loader is not None
        self.pending = self._loader.submit(
            lease_and_load,
            self.ctx,
            self.queue,
            self.batch_size,
            self.to_model,
            self._decoders,
            self.throttle,
            self.deadline,
        )

    def _submit_write(self, enc: Encoded) -> Future[BatchResult]:
        assert self._writer is not None
        return self._writer.submit(write_batch, self.ctx, self.upgrade_id, self.to_model, enc, self.queue)

    def _run_state(self) -> upgrades.RunState:
        with read_scope(self.ctx.url) as s:
            return upgrades.run_state(s, self.upgrade_id)

    def _settle(self, current: Encoded | None) -> tuple[str | None, bool]:
        """Wait for the write in flight, then look at the upgrade; measure a checkpoint when one
        is due (landing ``current`` first). Returns (state, whether ``current`` was written here)."""
        landed = None
        if self.writing is not None:
            landed = self.writing.result()
            self.writing = None
        periodic = current is None or time.monotonic() - self.beat >= HEARTBEAT_EVERY_S  # None: between batches
        if periodic:
            self.ctx.heartbeat(self.upgrade_id)
            self.beat = time.monotonic()
        state: str | None
        if landed is not None and landed.progress is not None and landed.state is not None:
            # The write just landed read these in its own transaction, off this thread.
            state, (done, total) = landed.state, landed.progress
        else:
            st = self._run_state()
            state, done, total = st.state, st.done, st.total
        frac = 1.0 if total <= 0 else min(1.0, done / total)
        if self._drop_gauges_if_over(state):
            return state, False
        BACKFILL_PROGRESS.labels(self.label).set(frac)
        if periodic:
            run = self._run_state()
            to_do = progress.still_to_do(run.total, run.done, run.failed, run.mapped, run.vector_only)
            BACKFILL_QUEUE_DEPTH.labels(self.label).set(to_do)
        step = None
        if (due := checkpoints.step_due(self.ctx.settings, frac)) != self.seen_step:  # a new step: claim it
            self.seen_step = due
            step = checkpoints.claim(self.ctx.settings, self.ctx.redis, self.upgrade_id, frac)
        if step is None:
            return state, False
        return self._checkpoint(step, current, state)

    def _drop_gauges_if_over(self, state: str | None) -> bool:
        """This process saw the upgrade end (or vanish): its gauge series go, wherever they were
        set (progress, queue depth, the live NFR of a checkpoint it measured). True if so."""
        if state is not None and state not in BACKFILL_OVER:
            return False
        remove_upgrade(self.upgrade_id)
        return True

    def _checkpoint(self, step: int, current: Encoded | None, state: str | None) -> tuple[str | None, bool]:
        settings, redis = self.ctx.settings, self.ctx.redis
        if not self.measured:
            # No probes: the point records progress only, so there is no cut to make and nothing
            # in flight needs landing first.
            checkpoints.measure_at_cut(settings, redis, self.upgrade_id, step)
            return state, False
        if current is not None:
            write_batch(self.ctx, self.upgrade_id, self.to_model, current, self.queue)
        if self.pending is not None:
            prefetched, self.pending = self.pending.result(), None
            if isinstance(prefetched, Leased):
                land_batch(self.ctx, self.upgrade_id, self.to_model, prefetched, self.queue)
        checkpoints.measure_at_cut(settings, redis, self.upgrade_id, step)
        return self._run_state().state, current is not None


def drain(ctx: WorkerContext, upgrade_id: int, budget_s: float | None = None) -> Outcome:
    """Backfill batches of one upgrade for up to ``budget_s`` (default ``drain_budget_seconds``)."""
    return Drain(ctx, upgrade_id, budget_s).run()
