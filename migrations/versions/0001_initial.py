"""Initial schema: models, serving state, gallery items, embeddings, upgrades, backfill tasks and failures.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-27 01:15:33.990060
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "gallery_items",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=False),
        sa.Column("label", sa.String(length=256), nullable=True),
        sa.Column("image_key", sa.String(length=128), nullable=False),
        sa.Column("active_model", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("external_id"),
    )
    with op.batch_alter_table("gallery_items", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_gallery_items_active_model"), ["active_model"], unique=False)

    op.create_table(
        "models",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("arch", sa.String(length=64), nullable=False),
        sa.Column("embedding_dim", sa.Integer(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("trained_with", sa.String(length=32), nullable=False),
        sa.Column("compatible_with", sa.String(length=128), nullable=True),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "serving_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("gallery_model", sa.String(length=128), nullable=True),
        sa.Column("query_model", sa.String(length=128), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "upgrades",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("from_model", sa.String(length=128), nullable=False),
        sa.Column("to_model", sa.String(length=128), nullable=False),
        sa.Column("strategy", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("nfr_guardrail", sa.Float(), nullable=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("nfr", sa.Float(), nullable=True),
        sa.Column("map", sa.Float(), nullable=True),
        sa.Column("baseline", sa.JSON(), nullable=True),
        sa.Column("checkpoints", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("upgrades", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_upgrades_state"), ["state"], unique=False)

    op.create_table(
        "backfill_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("upgrade_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("item_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("external_id", sa.String(length=256), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["upgrade_id"], ["upgrades.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("backfill_failures", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_backfill_failures_upgrade_id"), ["upgrade_id"], unique=False)

    op.create_table(
        "backfill_tasks",
        sa.Column("upgrade_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("item_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["gallery_items.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["upgrade_id"], ["upgrades.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("upgrade_id", "item_id"),
    )
    with op.batch_alter_table("backfill_tasks", schema=None) as batch_op:
        batch_op.create_index("ix_backfill_tasks_upgrade_status", ["upgrade_id", "status"], unique=False)

    op.create_table(
        "embeddings",
        sa.Column("item_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["item_id"], ["gallery_items.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("item_id", "model"),
    )
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.create_index("ix_embeddings_model", ["model"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("embeddings", schema=None) as batch_op:
        batch_op.drop_index("ix_embeddings_model")

    op.drop_table("embeddings")
    with op.batch_alter_table("backfill_tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_backfill_tasks_upgrade_status")

    op.drop_table("backfill_tasks")
    with op.batch_alter_table("backfill_failures", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_backfill_failures_upgrade_id"))

    op.drop_table("backfill_failures")
    with op.batch_alter_table("upgrades", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_upgrades_state"))

    op.drop_table("upgrades")
    op.drop_table("serving_state")
    op.drop_table("models")
    with op.batch_alter_table("gallery_items", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_gallery_items_active_model"))

    op.drop_table("gallery_items")
