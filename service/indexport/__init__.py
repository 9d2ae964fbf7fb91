"""The serving index's port, write side: how every writer hands one unit of change to the index
that searches read, after (never before) its SQL commit.

- :class:`Change` (``changes``): one unit of change: items added, moved or deleted, a plan
  switch, a rollback, a commit. Ids only, never vectors: SQL is the source of truth, and an
  adapter reads what it needs from there.
- :class:`UnitOfWork` / :func:`unit_of_work` (``unit_of_work``): the one stage-then-publish.
  The SQL transaction commits with the change staged in the outbox (``index_log_outbox``);
  then the collected changes go to the publisher. Writers never publish themselves.
- :func:`relay` (``unit_of_work``): publishes what a dead writer, or a failed publish, left
  staged.
- :class:`ChangePublisher` (``publishers``): what an index backend implements on this side, and
  :func:`publisher_for`, the factory that picks it from ``HOTREFRESH_INDEX_BACKEND``.

Adapters: today one, *in-process, replicated* (:class:`~service.indexport.publishers.LogPublisher`
appends to the Redis index log, which every API replica follows into its own in-memory mixed
index: ``service/api/serving/replica.py``). A *shared, external* store (Milvus, issue 24) adds
a publisher that writes the store from SQL and a read adapter beside the replica, and one branch
in each factory; the writers (routes, gallery, workers, upgrade control) do not change.
"""

from service.indexport.changes import Change
from service.indexport.publishers import ChangePublisher, LogPublisher, publisher_for
from service.indexport.unit_of_work import UnitOfWork, relay, unit_of_work

__all__ = ["Change", "ChangePublisher", "LogPublisher", "UnitOfWork", "publisher_for", "relay", "unit_of_work"]
