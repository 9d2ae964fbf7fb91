"""The index log's transactional outbox: entries staged in the writer's SQL transaction.

Why: an API write commits to SQL and only then appends its entry to the Redis stream. A process
that dies between the two, or a Redis call that fails while Redis keeps the stream (a timeout, a
network blip), left the other replicas without the change until their next full reload: an
added item that only one replica could find, a deleted one the others still returned. Now the
entry is written to ``index_log_outbox`` in the same transaction as the change, published after
the commit and deleted; a replica's follower publishes whatever is left behind
(``service.indexlog.relay``).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 02:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "index_log_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("op", sa.String(length=16), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=True),
        sa.Column("ids", sa.Text(), nullable=False),
        sa.Column("staged_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("index_log_outbox")
