"""The SQL schema: the source of truth for models, gallery items, vectors and upgrades.

Redis only ever holds state derived from these tables (the backfill queue, leases, the
index log), so everything here must be enough to rebuild it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from service.timestamps import utcnow

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class ModelRow(Base):
    """A registered checkpoint. ``name`` is the model's identity everywhere else."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    path: Mapped[str] = mapped_column(Text)
    arch: Mapped[str] = mapped_column(String(64))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    num_classes: Mapped[int] = mapped_column(Integer)
    trained_with: Mapped[str] = mapped_column(String(32))
    compatible_with: Mapped[str | None] = mapped_column(String(128), nullable=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ServingState(Base):
    """One row (id=1): which model encodes the gallery and which encodes queries.

    During a hot refresh ``query_model`` is the new model while items are still spread
    over both; ``gallery_model`` is the model new inserts are encoded with; ``plan`` is the query
    plan every replica serves (``service.upgrade.plans``; null: the query model against every
    segment, which is all there is outside an upgrade).
    """

    __tablename__ = "serving_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    gallery_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    query_model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    plan: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class GalleryItem(Base):
    __tablename__ = "gallery_items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    external_id: Mapped[str] = mapped_column(String(256), unique=True)
    label: Mapped[str | None] = mapped_column(String(256), nullable=True)
    image_key: Mapped[str] = mapped_column(String(128))  # content address in the image store
    # Not indexed: a two-valued column during an upgrade, rewritten for every moved item, and
    # only filtered on once per upgrade (migration 0002 says why and what it cost).
    active_model: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Embedding(Base):
    """One vector per item per model, so old vectors survive until an upgrade is committed."""

    __tablename__ = "embeddings"

    item_id: Mapped[int] = mapped_column(BigId, ForeignKey("gallery_items.id", ondelete="CASCADE"), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), primary_key=True)
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, little-endian, L2-normalised
    # True: mapped from the item's old vector by the old->new map, not encoded from its image
    # (its image was missing or undecodable, or the upgrade was vector-only; migration 0008).
    mapped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    __table_args__ = (Index("ix_embeddings_model", "model"),)


class Upgrade(Base):
    __tablename__ = "upgrades"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    from_model: Mapped[str] = mapped_column(String(128))
    to_model: Mapped[str] = mapped_column(String(128))
    strategy: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    batch_size: Mapped[int] = mapped_column(Integer)
    nfr_guardrail: Mapped[float | None] = mapped_column(Float, nullable=True)
    plan: Mapped[str] = mapped_column(String(16), default="paper", server_default="paper")  # as asked: or auto
    nfr_target: Mapped[float | None] = mapped_column(Float, nullable=True)  # the chooser's probe-NFR bound
    # The backfill's throttle, items per second over all workers together; null: unlimited. The
    # truth of the rate (migration 0007): Redis holds only the bucket derived from it (service.throttle).
    items_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    # Tasks left pending when the upgrade finished (service.states.FINISHED), set with done and
    # failed from its tasks by the transition; NULL while it runs (then they are counted).
    pending_at_end: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Items given a mapped vector instead of an encoded one (service.upgrade.mapping), and whether
    # the upgrade reads no image at all (every item mapped; migration 0008).
    mapped: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    vector_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    nfr: Mapped[float | None] = mapped_column(Float, nullable=True)
    map: Mapped[float | None] = mapped_column(Float, nullable=True)
    baseline: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # probe ids, old top-1 hits, old mAP
    checkpoints: Mapped[list] = mapped_column(JSON, default=list)  # [{"fraction","nfr","map","at"}]
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


_PENDING = text("status = 'pending'")
_FINISHED = text("status <> 'pending'")


class BackfillTask(Base):
    """An item an upgrade must re-encode, with its priority (the durable copy of the Redis queue)."""

    __tablename__ = "backfill_tasks"

    upgrade_id: Mapped[int] = mapped_column(BigId, ForeignKey("upgrades.id", ondelete="CASCADE"), primary_key=True)
    item_id: Mapped[int] = mapped_column(BigId, ForeignKey("gallery_items.id", ondelete="CASCADE"), primary_key=True)
    priority: Mapped[float] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done | failed | mapped
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    # Partial indexes, so that a task moving from pending to done leaves one small index and
    # joins another at its end instead of churning one (migration 0002). ``task_counts`` and
    # ``pending_after`` are written to be answered from them: the pending index is in the
    # queue's order (migration 0005), so the bounded Redis window refills with an index range
    # scan instead of sorting every pending task.
    __table_args__ = (
        Index(
            "ix_backfill_tasks_pending",
            "upgrade_id",
            text("priority DESC"),
            "item_id",
            sqlite_where=_PENDING,
            postgresql_where=_PENDING,
        ),
        Index("ix_backfill_tasks_finished", "upgrade_id", "status", sqlite_where=_FINISHED, postgresql_where=_FINISHED),
    )


class BackfillFailure(Base):
    __tablename__ = "backfill_failures"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    upgrade_id: Mapped[int] = mapped_column(BigId, ForeignKey("upgrades.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(BigId)
    external_id: Mapped[str] = mapped_column(String(256))
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class IndexLogOutbox(Base):
    """An index-log entry staged in the same transaction as the change it describes (a
    transactional outbox, migration 0003).

    The writer publishes it to the Redis stream right after the commit and deletes the row. A
    writer that dies in between, or whose Redis call fails while Redis keeps the stream, would
    otherwise leave every other replica without the change until its next full reload; a
    replica's follower publishes rows older than ``index_log_relay_s`` instead
    (``service.indexport.relay``). Normally empty: one short-lived row per API write.
    """

    __tablename__ = "index_log_outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    op: Mapped[str] = mapped_column(String(16))
    model: Mapped[str | None] = mapped_column(String(128), nullable=True)
    ids: Mapped[str] = mapped_column(Text)  # a JSON list of gallery item ids
    # Epoch seconds, not a DateTime: the relay compares ages, and SQLite hands DateTimes back naive.
    staged_at: Mapped[float] = mapped_column(Float)
