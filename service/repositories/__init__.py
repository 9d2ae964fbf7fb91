"""Every SQL statement of hotrefresh, one module per aggregate:

- ``items``: gallery items and their vectors (inserts, deletes, the backfill's moves, the bulk
  reads a replica or a probe measurement makes);
- ``catalog``: registered models and the serving state (which model embeds the gallery and
  which embeds queries);
- ``upgrades``: upgrades and their backfill tasks (state transitions, the batch write, failures,
  checkpoints);
- ``outbox``: index-log entries staged inside a writer's transaction.

Plain functions over a SQLAlchemy ``Session``. They never commit: the caller owns the
transaction (``service.db.session``), so a request's rows, vectors and state change land
together or not at all. Nothing outside this package writes SQL.
"""
