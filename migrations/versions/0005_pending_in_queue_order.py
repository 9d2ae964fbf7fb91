"""The pending-task index in the queue's order: Redis holds a bounded window of the queue.

Why: Redis used to hold every id of an upgrade (a ZSET member and a HASH field per item,
231.6 MiB at 1M items, about 230 GB at 10^9) although workers only ever lease from its top.
Now it holds a window of at most ``queue_window`` ids, refilled from SQL in priority order
(``service.queue``). A refill reads the next pending tasks after the window's last one, in
the order ``priority DESC, item_id ASC``; with ``(upgrade_id, priority DESC, item_id)`` as the
pending index that is a range scan of the index, not a sort of every pending task per refill.
The index still answers the pending count alone (its first column is the upgrade).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 16:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    with op.batch_alter_table("backfill_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_backfill_tasks_pending")
        batch_op.create_index(
            "ix_backfill_tasks_pending",
            ["upgrade_id", sa.text("priority DESC"), "item_id"],
            unique=False,
            sqlite_where=_PENDING,
            postgresql_where=_PENDING,
        )


def downgrade() -> None:
    with op.batch_alter_table("backfill_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_backfill_tasks_pending")
        batch_op.create_index(
            "ix_backfill_tasks_pending", ["upgrade_id"], unique=False, sqlite_where=_PENDING, postgresql_where=_PENDING
        )
