"""Upgrades and their backfill tasks (the durable twin of the Redis queue): state transitions,
the backfill's batch write, failures, checkpoints.

Bulk statements (one ``UPDATE ... WHERE id IN``) rather than
per-row ORM round trips, because a backfill batch's SQL time is pure overhead on top of the
encoder (benchmark B1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Select, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session, defer

from service.db.schema import BackfillFailure, BackfillTask, GalleryItem, Upgrade
from service.repositories.common import id_chunks, in_ids, table
from service.repositories.items import external_ids_of, lock_items, set_active_model, upsert_embeddings
from service.states import ACTIVE, BATCH_MAY_COMMIT, FINISHED, THROTTLEABLE, TRANSITIONS, TransitionError
from service.timestamps import utcnow


def get_upgrade(session: Session, upgrade_id: int) -> Upgrade | None:
    """The row, with the bulky JSON columns (baseline: the probes' query vectors; checkpoints)
    loaded only if touched: workers read the row around every batch."""
    return session.scalar(
        select(Upgrade)
        .where(Upgrade.id == int(upgrade_id))
        .options(defer(Upgrade.baseline), defer(Upgrade.checkpoints))
        .execution_options(populate_existing=True)
    )


def latest_upgrade(session: Session) -> Upgrade | None:
    return session.scalar(select(Upgrade).order_by(Upgrade.id.desc()).limit(1))


def list_upgrades(
    session: Session, *, state: str | None = None, before: int | None = None, limit: int = 20
) -> list[Upgrade]:
    """Upgrades newest first (by id, which only grows), those with ``id < before`` when given,
    in ``state`` when given: one page of the history (``GET /upgrades``)."""
    q = select(Upgrade).order_by(Upgrade.id.desc()).limit(int(limit))
    if state is not None:
        q = q.where(Upgrade.state == state)
    if before is not None:
        q = q.where(Upgrade.id < int(before))
    return list(session.scalars(q))


def active_upgrade_ids(session: Session, states: Sequence[str] = ACTIVE) -> list[int]:
    return [int(i) for i in session.scalars(select(Upgrade.id).where(Upgrade.state.in_(states)))]


def transition(session: Session, upgrade_id: int, action: str, **fields: object) -> str:
    """Apply ``action`` if the current state allows it (one conditional UPDATE); returns the new
    state, else raises :class:`TransitionError` and changes nothing."""
    allowed, target = TRANSITIONS[action]
    values: dict[str, object] = {"state": target, "updated_at": utcnow(), **fields}
    res = session.connection().execute(
        update(Upgrade).where(Upgrade.id == int(upgrade_id), Upgrade.state.in_(allowed)).values(**values)
    )
    if res.rowcount != 1:
        current = session.scalar(select(Upgrade.state).where(Upgrade.id == int(upgrade_id)))
        raise TransitionError(int(upgrade_id), action, current)
    if target in FINISHED:
        # The row is locked by the UPDATE above, so every batch that held the state's share
        # lock has landed and none lands after: the counts are final (service.states.FINISHED).
        counts = task_counts(session, upgrade_id)
        session.connection().execute(
            update(Upgrade)
            .where(Upgrade.id == int(upgrade_id))
            .values(done=counts["done"], failed=counts["failed"], pending_at_end=counts["pending"])
        )
    session.expire_all()
    return target


def set_throttle(session: Session, upgrade_id: int, items_per_second: float | None) -> str | None:
    """Set the backfill's rate (None: unlimited) if the upgrade's backfill is not over (one
    conditional UPDATE, so it cannot land on an upgrade a worker just completed). Returns the
    state it was set in, or None when it was not set: then :func:`get_upgrade` says why."""
    row = session.execute(
        update(Upgrade)
        .where(Upgrade.id == int(upgrade_id), Upgrade.state.in_(THROTTLEABLE))
        .values(items_per_second=items_per_second, updated_at=utcnow())
        .returning(Upgrade.state)
    ).first()
    session.expire_all()
    return None if row is None else str(row[0])


def throttle_of(session: Session, upgrade_id: int) -> float | None:
    """The backfill's rate in items per second; None: unlimited (or no such upgrade)."""
    rate = session.scalar(select(Upgrade.items_per_second).where(Upgrade.id == int(upgrade_id)))
    return None if rate is None else float(rate)


def lock_state(session: Session, upgrade_id: int, counting: bool = False) -> str | None:
    """The upgrade's state, locked until the transaction ends (SQLite's ``BEGIN IMMEDIATE``
    already serialises writers). A rollback's UPDATE waits for batches holding it, and a batch
    that starts after a rollback sees the new state.

    ``counting``: the transaction will update the row's counters, so it takes PostgreSQL's
    ``FOR NO KEY UPDATE`` at once. Two batches that each took ``FOR SHARE`` and then both went
    on to ``UPDATE ... done = done + n`` deadlocked (each waiting for the other's share lock;
    PostgreSQL aborted one a second later, a retry per collision, found by the two-worker
    throttle test). Batches now take turns from the lock on, as their counter updates made
    them take turns from the update on anyway; only one lock is taken, so no cycle can form.
    Otherwise ``FOR SHARE``: readers of the state (a checkpoint) do not hold back batches."""
    query = select(Upgrade.state).where(Upgrade.id == int(upgrade_id))
    if counting:
        return session.scalar(query.with_for_update(key_share=True))
    return session.scalar(query.with_for_update(read=True))


# --- tasks -----------------------------------------------------------------------------------


def replace_tasks(
    session: Session, upgrade_id: int, ids: np.ndarray, priorities: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The task list of a (re-)scored upgrade; safe to repeat while the state is ``scoring``.

    Scoring reads the gallery in an earlier, read-only transaction, so an item may have been
    deleted since: only ids still in the gallery get a task (their rows locked, as a batch
    write locks them, so a concurrent delete waits or has already won). Returns the (ids,
    priorities) kept, highest priority first.

    The rows are inserted in the order the queue hands them out (highest priority first), so
    the tasks one batch marks done sit side by side in the table and in its partial indexes
    instead of at 256 random places (benchmark B1: a third fewer pages written per batch)."""
    session.execute(delete(BackfillTask).where(BackfillTask.upgrade_id == int(upgrade_id)))
    present = set(lock_items(session, ids.tolist()))
    keep = np.fromiter((int(i) in present for i in ids.tolist()), bool, count=len(ids))
    ids, priorities = ids[keep], priorities[keep]
    order = np.lexsort((ids, -priorities))  # the queue's order; ties by id, so it is repeatable
    ids, priorities = ids[order], priorities[order]
    now = utcnow()
    rows = [
        {
            "upgrade_id": int(upgrade_id),
            "item_id": int(i),
            "priority": float(p),
            "status": "pending",
            "attempts": 0,
            "updated_at": now,
        }
        for i, p in zip(ids.tolist(), priorities.tolist(), strict=True)
    ]
    for start in range(0, len(rows), 5000):
        session.execute(insert(BackfillTask), rows[start : start + 5000])
    return ids, priorities


def pending_after(
    session: Session, upgrade_id: int, after: tuple[float, int] | None, limit: int
) -> list[tuple[int, float]]:
    """The next ``limit`` pending ``(item id, priority)`` pairs in queue order (priority
    descending, ties by ascending id) after ``after`` = (priority, item id), or from the start:
    the Redis window's refill (``service.queue``). Two range scans of the pending index, which
    is in this order (migration 0005): the rest of the cursor's priority after its id, then the
    lower priorities. (One query with ``priority < p OR (priority = p AND item_id > i)`` bounds
    its scan by ``priority <= p`` only, and walked every finished task of the cursor's priority
    on each refill: 25 s of a 1M-item drain with priorities on a grid of 64 values.)"""
    out: list[tuple[int, float]] = []
    for stmt in pending_after_queries(upgrade_id, after, limit):
        out += [(int(i), float(p)) for i, p in session.execute(stmt.limit(int(limit) - len(out)))]
        if len(out) >= limit:
            break
    return out


def pending_after_queries(upgrade_id: int, after: tuple[float, int] | None, limit: int) -> list[Select]:
    """:func:`pending_after`'s statements, in order (its test reads the planner's plan of each)."""
    t = BackfillTask
    pending = select(t.item_id, t.priority).where(t.upgrade_id == int(upgrade_id), t.status == "pending")
    order = (t.priority.desc(), t.item_id)
    if after is None:
        return [pending.order_by(*order).limit(int(limit))]
    p, i = float(after[0]), int(after[1])
    return [
        pending.where(t.priority == p, t.item_id > i).order_by(*order).limit(int(limit)),
        pending.where(t.priority < p).order_by(*order).limit(int(limit)),
    ]


def task_counts(session: Session, upgrade_id: int) -> dict[str, int]:
    """How many of the upgrade's tasks are pending, done and failed. Two queries, because each
    is answered from one of the tasks' partial indexes alone (a single GROUP BY over all the
    upgrade's tasks would read every task row: GET /upgrade asks this on every call)."""
    up = BackfillTask.upgrade_id == int(upgrade_id)
    counts = {"pending": 0, "done": 0, "failed": 0, "mapped": 0}
    counts["pending"] = int(
        session.scalar(select(func.count()).select_from(BackfillTask).where(up, BackfillTask.status == "pending")) or 0
    )
    rows = session.execute(
        select(BackfillTask.status, func.count())
        .where(up, BackfillTask.status != "pending")
        .group_by(BackfillTask.status)
    )
    counts.update({str(s): int(n) for s, n in rows})
    return counts


def counts_of(session: Session, up: Upgrade) -> dict[str, int]:
    """:func:`task_counts` of the upgrade, read from its row once it has finished (the
    transition into a finished state wrote them there), so a finished upgrade costs no count."""
    if up.state in FINISHED and up.pending_at_end is not None:
        return {"pending": up.pending_at_end, "done": up.done, "failed": up.failed, "mapped": up.mapped or 0}
    return task_counts(session, up.id)


def count_status(session: Session, upgrade_id: int, status: str) -> int:
    """How many of the upgrade's tasks are in ``status`` (answered from a partial index)."""
    return int(
        session.scalar(
            select(func.count())
            .select_from(BackfillTask)
            .where(BackfillTask.upgrade_id == int(upgrade_id), BackfillTask.status == status)
        )
        or 0
    )


def item_ids_with_status(session: Session, upgrade_id: int, status: str) -> list[int]:
    """Item ids of the upgrade's tasks in ``status``, ascending."""
    rows = session.scalars(
        select(BackfillTask.item_id)
        .where(BackfillTask.upgrade_id == int(upgrade_id), BackfillTask.status == status)
        .order_by(BackfillTask.item_id)
    )
    return [int(i) for i in rows]


def claim_for_mapping(session: Session, upgrade_id: int, status: str, limit: int) -> list[int]:
    """Up to ``limit`` tasks in ``status`` set to ``mapped`` in one conditional UPDATE; returns
    their item ids, ascending. Two callers never claim one task: on PostgreSQL the second waits
    on the first's row locks and re-checks the status; SQLite serialises the writers."""
    up = BackfillTask.upgrade_id == int(upgrade_id)
    first = (
        select(BackfillTask.item_id)
        .where(up, BackfillTask.status == status)
        .order_by(BackfillTask.item_id)
        .limit(int(limit))
        .scalar_subquery()
    )
    rows = session.execute(
        update(BackfillTask)
        .where(up, BackfillTask.status == status, BackfillTask.item_id.in_(first))
        .values(status="mapped", updated_at=utcnow())
        .returning(BackfillTask.item_id)
        .execution_options(synchronize_session=False)
    )
    return sorted(int(i) for i in rows.scalars())


def count_mapped(session: Session, upgrade_id: int, n: int) -> None:
    if n:
        session.execute(update(Upgrade).where(Upgrade.id == int(upgrade_id)).values(mapped=Upgrade.mapped + int(n)))


def mapped_among(session: Session, upgrade_id: int, ids: Sequence[int]) -> set[int]:
    """Which of ``ids`` this upgrade gave a mapped vector (their task is ``mapped``)."""
    out: set[int] = set()
    for chunk in id_chunks(list(ids)):
        out.update(
            int(i)
            for i in session.scalars(
                select(BackfillTask.item_id).where(
                    BackfillTask.upgrade_id == int(upgrade_id),
                    BackfillTask.status == "mapped",
                    BackfillTask.item_id.in_(chunk),
                )
            )
        )
    return out


def done_among(session: Session, upgrade_id: int, ids: Sequence[int]) -> list[int]:
    """Which of ``ids`` this upgrade has already moved (their task is done)."""
    out: list[int] = []
    for chunk in id_chunks(list(ids)):
        out += session.scalars(
            select(BackfillTask.item_id).where(
                BackfillTask.upgrade_id == int(upgrade_id),
                BackfillTask.status == "done",
                BackfillTask.item_id.in_(chunk),
            )
        ).all()
    return sorted(int(i) for i in out)


def add_orphans(session: Session, upgrade: Upgrade) -> list[int]:
    """Items still on the old model with no task (inserted with the old model in the instant
    the upgrade switched models): give them a task at the lowest priority so none is left."""
    has_task = select(BackfillTask.item_id).where(BackfillTask.upgrade_id == upgrade.id)
    ids = [
        int(i)
        for i in session.scalars(
            select(GalleryItem.id).where(
                GalleryItem.active_model == upgrade.from_model, GalleryItem.id.not_in(has_task)
            )
        )
    ]
    if ids:
        now = utcnow()
        session.execute(
            insert(BackfillTask),
            [
                {
                    "upgrade_id": upgrade.id,
                    "item_id": i,
                    "priority": -1.0,
                    "status": "pending",
                    "attempts": 0,
                    "updated_at": now,
                }
                for i in ids
            ],
        )
        session.execute(update(Upgrade).where(Upgrade.id == upgrade.id).values(total=Upgrade.total + len(ids)))
    return ids


_tasks = table(BackfillTask)
_TASKS_DONE = (
    update(_tasks)
    .where(_tasks.c.upgrade_id == bindparam("b_upgrade"), in_ids(_tasks.c.item_id), _tasks.c.status == "pending")
    .values(status="done", updated_at=bindparam("now"))
)


_upgrades = table(Upgrade)
# Counts a batch's newly done tasks and reads the counts back in the same statement.
_COUNT_DONE = (
    update(_upgrades)
    .where(_upgrades.c.id == bindparam("b_upgrade"))
    .values(done=_upgrades.c.done + bindparam("n"))
    .returning(_upgrades.c.done, _upgrades.c.total)
)


@dataclass(frozen=True)
class BatchOutcome:
    moved: list[int]  # items now on the new model (the index log's ``move``)
    newly_done: int  # tasks that went pending -> done in this transaction (0 on a replay)
    state: str | None  # the upgrade's state when the batch tried to land
    # (done, total) of the upgrade as this transaction left them, when the batch landed: read
    # here so the worker's encoder thread need not ask SQL again after every batch
    progress: tuple[int, int] | None = None


def record_encoded(
    session: Session, upgrade_id: int, to_model: str, item_ids: Sequence[int], vectors: np.ndarray
) -> BatchOutcome:
    """Land one batch: new vectors, items' active model, tasks done, the done counter.

    Idempotent: replaying the same batch (a worker killed after the commit but before its ack,
    whose lease then expired) rewrites the same vectors and counts nothing twice, because only
    tasks still ``pending`` are counted. Nothing lands unless the upgrade is running or paused.
    """
    upgrade_id = int(upgrade_id)
    state = lock_state(session, upgrade_id, counting=True)
    if state not in BATCH_MAY_COMMIT:
        return BatchOutcome([], 0, state)
    by_id = {int(i): k for k, i in enumerate(item_ids)}
    conn = session.connection()
    now = utcnow()
    # One statement each, whatever the batch's size (ids bound as one array: in_ids).
    present = set_active_model(conn, to_model, sorted(by_id))
    if not present:
        return BatchOutcome([], 0, state)
    upsert_embeddings(session, to_model, present, vectors[[by_id[i] for i in present]], now)
    done = int(conn.execute(_TASKS_DONE, {"b_upgrade": upgrade_id, "ids": present, "now": now}).rowcount or 0)
    if done:
        counts = conn.execute(_COUNT_DONE, {"b_upgrade": upgrade_id, "n": done}).one()
    else:  # a replay: nothing counted, the counts as they are
        counts = session.execute(select(Upgrade.done, Upgrade.total).where(Upgrade.id == upgrade_id)).one()
    return BatchOutcome(present, done, state, (int(counts[0]), int(counts[1])))


@dataclass(frozen=True)
class FailureOutcome:
    retry: list[int]  # attempts left: back to the queue
    failed: list[int]  # out of attempts: recorded in backfill_failures, status failed


def record_errors(session: Session, upgrade_id: int, errors: dict[int, str], max_attempts: int) -> FailureOutcome:
    """Count one more attempt for each item that could not be loaded or encoded."""
    upgrade_id = int(upgrade_id)
    if not errors or lock_state(session, upgrade_id, counting=True) not in BATCH_MAY_COMMIT:
        return FailureOutcome([], [])
    retry: list[int] = []
    failed: list[int] = []
    rows = {
        int(t.item_id): t
        for chunk in id_chunks(list(errors))
        for t in session.scalars(
            select(BackfillTask)
            .where(
                BackfillTask.upgrade_id == upgrade_id,
                BackfillTask.item_id.in_(chunk),
                BackfillTask.status == "pending",
            )
            .with_for_update()
        )
    }
    external = external_ids_of(session, rows)
    for item_id, task in rows.items():
        task.attempts += 1
        if task.attempts >= max_attempts:
            task.status = "failed"
            failed.append(item_id)
            session.add(
                BackfillFailure(
                    upgrade_id=upgrade_id,
                    item_id=item_id,
                    external_id=external.get(item_id, "?"),
                    attempts=task.attempts,
                    error=errors[item_id][:2000],
                )
            )
        else:
            retry.append(item_id)
    if failed:
        session.execute(update(Upgrade).where(Upgrade.id == upgrade_id).values(failed=Upgrade.failed + len(failed)))
    session.flush()
    return FailureOutcome(retry, failed)


def list_failures(session: Session, upgrade_id: int, limit: int = 100) -> list[BackfillFailure]:
    return list(
        session.scalars(
            select(BackfillFailure)
            .where(BackfillFailure.upgrade_id == int(upgrade_id))
            .order_by(BackfillFailure.id)
            .limit(limit)
        )
    )


def active_upgrade(session: Session) -> Upgrade | None:
    """The upgrade that still owns the gallery (old vectors must be kept; no second may start)."""
    return session.scalar(select(Upgrade).where(Upgrade.state.in_(ACTIVE)).order_by(Upgrade.id.desc()).limit(1))


def committed_sources(session: Session) -> dict[str, str]:
    """model -> the model a committed upgrade moved the gallery from onto it."""
    rows = session.execute(select(Upgrade.to_model, Upgrade.from_model).where(Upgrade.state == "committed"))
    return {to: src for to, src in rows}


def add_upgrade(session: Session, row: Upgrade) -> Upgrade:
    session.add(row)
    session.flush()
    return row


def set_total(session: Session, upgrade_id: int, total: int) -> None:
    session.execute(update(Upgrade).where(Upgrade.id == int(upgrade_id)).values(total=int(total)))


def set_error(session: Session, upgrade_id: int, error: str) -> None:
    session.execute(
        update(Upgrade).where(Upgrade.id == int(upgrade_id)).values(error=error[:4000], updated_at=utcnow())
    )


@dataclass(frozen=True)
class RunState:
    """What a backfill worker reads around its batches: the columns, not the row (no JSON)."""

    state: str | None  # None: no such upgrade
    to_model: str = ""
    batch_size: int = 0
    done: int = 0
    total: int = 0
    failed: int = 0
    vector_only: bool = False
    mapped: int = 0


def run_state(session: Session, upgrade_id: int) -> RunState:
    row = session.execute(
        select(
            Upgrade.state,
            Upgrade.to_model,
            Upgrade.batch_size,
            Upgrade.done,
            Upgrade.total,
            Upgrade.failed,
            Upgrade.vector_only,
            Upgrade.mapped,
        ).where(Upgrade.id == int(upgrade_id))
    ).first()
    if row is None:
        return RunState(None)
    state, to_model, batch_size, done, total, failed, vector_only, mapped = row
    return RunState(state, to_model, batch_size, done, total, failed, bool(vector_only), int(mapped or 0))


def append_checkpoint(session: Session, upgrade_id: int, point: dict) -> Upgrade:
    """Add a live measurement to the upgrade's curve under the row lock, and make it the latest
    NFR and mAP. Two workers that claimed neighbouring steps and measured the same cut leave one."""
    up = session.scalar(select(Upgrade).where(Upgrade.id == int(upgrade_id)).with_for_update())
    assert up is not None
    points = list(up.checkpoints or [])
    if points and point["step"] != -1 and points[-1].get("fraction") == point["fraction"]:
        return up
    up.checkpoints = [*points, point]
    up.nfr = point["nfr"]
    up.map = point["map"]
    session.flush()
    return up
