"""Mapped vectors: an item whose new-model vector was not encoded from its image but mapped from
its old vector by the old->new map (``service.upgrade.mapping``), and upgrades run without images.

Why: an item whose image is missing or cannot be decoded used to stay on the old model and fall
out of the index at commit. Now it is given the mapped vector, and SQL says so on the vector
itself (``embeddings.mapped``: the mark belongs to that vector, and goes with it when a later
upgrade re-encodes the item). The upgrade counts them apart (``upgrades.mapped``) and says
whether it was started without reading any image (``upgrades.vector_only``). Rows written
before this migration are encoded vectors and image upgrades, which is what the defaults say.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 16:45:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("embeddings") as batch:
        batch.add_column(sa.Column("mapped", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("upgrades") as batch:
        batch.add_column(sa.Column("vector_only", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("mapped", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("upgrades") as batch:
        batch.drop_column("mapped")
        batch.drop_column("vector_only")
    with op.batch_alter_table("embeddings") as batch:
        batch.drop_column("mapped")
