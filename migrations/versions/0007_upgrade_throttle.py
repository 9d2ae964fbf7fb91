"""The backfill's throttle: an upgrade's rate in items per second (null: unlimited).

Why: a backfill that shares GPUs or the database with live traffic must be slowed down while it
runs, not only paused. The rate is set with the upgrade (``POST /upgrade``) and changed live
(``POST /upgrade/{id}/throttle``); every worker honours it through one token bucket in Redis
(``service.throttle``). SQL holds the rate, so a Redis that lost the bucket rebuilds it from
here. Existing upgrades were never throttled: their rows read null.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("upgrades") as batch:
        batch.add_column(sa.Column("items_per_second", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upgrades") as batch:
        batch.drop_column("items_per_second")
