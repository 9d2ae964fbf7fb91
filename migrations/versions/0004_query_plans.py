"""Query plans: the plan every replica serves lives in the serving state, the plan an upgrade was
asked for and its NFR target in the upgrade row.

Why: a plan is data that every API replica must serve alike (which query embedding scores which
segment, the calibration of each, the old->new map of ``transform``). SQL holds it; replicas
re-read it on the index log's ``switch`` entry, like the query model. Existing upgrades ran the
paper's plan, and that is what their rows say.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 13:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("serving_state") as batch:
        batch.add_column(sa.Column("plan", sa.JSON(), nullable=True))
    with op.batch_alter_table("upgrades") as batch:
        batch.add_column(sa.Column("plan", sa.String(length=16), nullable=False, server_default="paper"))
        batch.add_column(sa.Column("nfr_target", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("upgrades") as batch:
        batch.drop_column("nfr_target")
        batch.drop_column("plan")
    with op.batch_alter_table("serving_state") as batch:
        batch.drop_column("plan")
