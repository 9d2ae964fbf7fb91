"""Stage-then-publish, once: the unit of work every writer of the serving index goes through, and
the relay that publishes what was left staged.

A writer opens :func:`unit_of_work`, makes its SQL change in ``uow.session`` and ``record``\\ s the
index :class:`~service.indexport.changes.Change` it implies. The change is staged in the outbox
(``index_log_outbox``) in the same transaction, so it commits or rolls back with the SQL change.
Only after the commit do the collected changes go to the backend's publisher
(``service.indexport.publishers``), and their outbox rows are dropped. Nothing is lost between
the commit and the publish: what a dead writer or a failed publish leaves staged, :func:`relay`
(run by every API replica's follower) publishes later. Publishing is idempotent, so a change
published twice (the drop failed) is harmless.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis as redis_lib
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service.db.session import read_scope, session_scope
from service.indexport.changes import Change
from service.indexport.publishers import ChangePublisher, publisher_for
from service.metrics import INDEX_LOG_RELAYED
from service.repositories import outbox as outbox_repo
from service.settings import Settings

log = logging.getLogger(__name__)

RELAY_BATCH = 500


class UnitOfWork:
    """One SQL transaction (``session``) and the index changes it makes (``record``)."""

    def __init__(self, session: Session, *, outbox: bool = True) -> None:
        self.session = session
        self._outbox = outbox
        self._changes: list[Change] = []
        self._rows: list[int] = []

    def record(self, change: Change) -> Change:
        """Stage ``change`` in this transaction; it is published after the commit."""
        if self._outbox:
            self._rows.append(outbox_repo.add(self.session, change.op, change.model, change.ids))
        self._changes.append(change)
        return change

    @property
    def changes(self) -> list[Change]:
        """What this unit recorded: after the block, what was committed (and published, or left
        staged for the relay). The request's own read-your-writes applies these."""
        return list(self._changes)

    def publish(self, settings: Settings, publisher: ChangePublisher) -> None:
        """After the commit (:func:`unit_of_work` calls it): hand the changes to ``publisher``,
        then drop their outbox rows."""
        if not self._outbox:
            publisher.publish(self._changes)
            return
        if settings.failpoint == "before_publish" and settings.env == "test":
            os.kill(os.getpid(), signal.SIGKILL)  # the crash the outbox exists for (tests/e2e/test_outages.py)
        try:
            publisher.publish(self._changes)
        except Exception:  # the store or Redis away, whatever its client raises: the relay retries
            log.exception(
                "publishing %s failed; the changes stay in the outbox and a replica's relay publishes them",
                ", ".join(f"{c.op} ({len(c.ids)} ids)" for c in self._changes),
            )
            return
        try:
            with session_scope(settings.sqlalchemy_url) as s:
                outbox_repo.drop(s, self._rows)
        except SQLAlchemyError:
            log.exception("published outbox rows %s but could not drop them; they will be published again", self._rows)


@contextmanager
def unit_of_work(
    settings: Settings,
    redis: redis_lib.Redis,
    *,
    outbox: bool = True,
    publisher: ChangePublisher | None = None,
) -> Iterator[UnitOfWork]:
    """One SQL transaction whose recorded changes are published after it commits; nothing is
    published if it rolls back (any exception from the block).

    ``outbox=False`` is for a writer whose own work queue already holds the change until it is
    published: the backfill's batch, whose lease is acked only after this returns. A publish
    failure then raises, the lease is not acked, the batch is redone and published again
    (its SQL replay is a no-op). An outbox row would be a second copy of that guarantee and one
    more write transaction per batch on SQLite's single write lock (benchmark B1). With the
    outbox (every other writer), a publish failure is logged and never raised: SQL already holds
    the change, the request succeeded, and the relay publishes it."""
    with session_scope(settings.sqlalchemy_url) as session:
        uow = UnitOfWork(session, outbox=outbox)
        yield uow
    if uow.changes:
        uow.publish(settings, publisher or publisher_for(settings, redis))


def relay(settings: Settings, publisher: ChangePublisher, min_age_s: float) -> int:
    """Publish outbox rows staged more than ``min_age_s`` ago (their writer died after its commit
    or its publish failed), marked ``late``; returns how many.

    Every replica runs this. The rows are claimed in a write transaction (``FOR UPDATE SKIP
    LOCKED`` on PostgreSQL; SQLite serialises writers), so one replica publishes each; a publish
    failure rolls the claim back and the rows wait for the next try."""
    url = settings.sqlalchemy_url
    cutoff = time.time() - min_age_s
    with read_scope(url) as s:  # the usual answer, without taking SQLite's write lock
        if not outbox_repo.any_staged_before(s, cutoff):
            return 0
    with session_scope(url) as s:
        rows = outbox_repo.claim_staged_before(s, cutoff, RELAY_BATCH)
        changes = [Change(row.op, row.model, tuple(json.loads(row.ids))) for row in rows]
        if changes:
            publisher.publish(changes, late=True)
        outbox_repo.drop(s, [row.id for row in rows])
    if rows:
        INDEX_LOG_RELAYED.inc(len(rows))
        log.warning(
            "published %d index changes their writers had left staged (%s)",
            len(rows),
            ", ".join(sorted({row.op for row in rows})),
        )
    return len(rows)
