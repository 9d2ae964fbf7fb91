"""Indexes a backfill batch does not have to rewrite at random: pending tasks in a partial index,
finished ones in another, and no index on the items' active model.

Why (benchmark B1, ``benchmarks/backfill_write.py``): a batch moves 256 items chosen by
uncertainty, i.e. at random places in every B-tree keyed by item. On a 60,000-item SQLite
gallery the batch's write transaction cost ~100 us of CPU per item, a third of it in the
``(upgrade_id, status)`` index (each item's entry left the ``pending`` run and joined the
``done`` run just before it, the two runs churning the same pages) and another share in
``ix_gallery_items_active_model`` (a two-valued column: each moved item's entry deleted from
one run and inserted into the other). Every page touched is written to the WAL at commit.

- ``ix_backfill_tasks_pending`` (``upgrade_id`` where ``status = 'pending'``): what the queue
  is rebuilt from and what ``pending`` counts; an item leaves it when its task is done.
- ``ix_backfill_tasks_finished`` (``upgrade_id, status`` where ``status <> 'pending'``): the
  done and failed counts, index-only.
- The active-model index is dropped: every query that filters on it runs once per upgrade
  (start, completion, commit, rollback, probe selection) or already scans the whole table
  (the checkpoints' moved fraction), and a full scan of the items is milliseconds per
  hundred thousand rows there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 21:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("status = 'pending'")
_FINISHED = sa.text("status <> 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("backfill_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_backfill_tasks_upgrade_status")
        batch_op.create_index(
            "ix_backfill_tasks_pending", ["upgrade_id"], unique=False, sqlite_where=_PENDING, postgresql_where=_PENDING
        )
        batch_op.create_index(
            "ix_backfill_tasks_finished",
            ["upgrade_id", "status"],
            unique=False,
            sqlite_where=_FINISHED,
            postgresql_where=_FINISHED,
        )
    with op.batch_alter_table("gallery_items", schema=None) as batch_op:
        batch_op.drop_index("ix_gallery_items_active_model")


def downgrade() -> None:
    with op.batch_alter_table("gallery_items", schema=None) as batch_op:
        batch_op.create_index("ix_gallery_items_active_model", ["active_model"], unique=False)
    with op.batch_alter_table("backfill_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_backfill_tasks_finished")
        batch_op.drop_index("ix_backfill_tasks_pending")
        batch_op.create_index("ix_backfill_tasks_upgrade_status", ["upgrade_id", "status"], unique=False)
