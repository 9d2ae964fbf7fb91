"""A finished upgrade keeps its final task counts in its row.

Why: ``GET /upgrades`` (the history) shows every upgrade as ``GET /upgrade/{id}`` does, and that
view counts the upgrade's tasks (pending, done, failed): one index scan per upgrade, as long as
the gallery it moved. Once an upgrade is completed, committed, cancelled, rolled back or failed
no task of it changes again, so the transition into such a state counts them once and writes
them to the row (``done``, ``failed`` and this column). Upgrades that had already finished are
counted here, once, the same way.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 16:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# service.states.FINISHED as of this revision (a migration must not change with the code)
_FINISHED = ("completed", "committed", "cancelled", "rolled_back", "failed")


def _count(status: str) -> str:
    return f"(SELECT count(*) FROM backfill_tasks t WHERE t.upgrade_id = upgrades.id AND t.status = '{status}')"


def upgrade() -> None:
    with op.batch_alter_table("upgrades") as batch:
        batch.add_column(sa.Column("pending_at_end", sa.Integer(), nullable=True))
    finished = ", ".join(f"'{s}'" for s in _FINISHED)
    op.execute(
        f"UPDATE upgrades SET pending_at_end = {_count('pending')}, done = {_count('done')}, "
        f"failed = {_count('failed')} WHERE state IN ({finished})"
    )


def downgrade() -> None:
    with op.batch_alter_table("upgrades") as batch:
        batch.drop_column("pending_at_end")
