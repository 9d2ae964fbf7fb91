"""The index log: a Redis stream of changes to the gallery, tailed by every API replica.

Writers (API requests, backfill workers, upgrade control) commit to SQL first and only then
:func:`append`, so an entry always describes state already durable in SQL. Entries carry ids,
not vectors: a replica reads the current SQL state of those ids when it applies an entry,
which makes applying idempotent and lets a late replica converge to the truth.

Nothing may be lost between the commit and the append. Backfill workers get that from their
lease (a batch not acknowledged is redone and logged again). Every other writer stages its
entry in the same SQL transaction as the change (:func:`stage`, the ``index_log_outbox``
table) and publishes it after the commit (:func:`publish`); what a dead writer or a failed
Redis call leaves staged, a replica's follower publishes (:func:`relay`).

Key ``{prefix}:indexlog`` (a stream trimmed to about ``index_log_maxlen`` entries) and
``{prefix}:indexlog:epoch`` (a random token created with the stream). A replica that finds the
epoch changed or gone knows Redis lost the stream (restart, flush) and reloads from SQL; one
whose position is older than the stream's trimmed tail knows it missed entries and reloads too.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis as redis_lib
from redis.typing import EncodableT, FieldT
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service import keys
from service.db.session import read_scope, session_scope
from service.metrics import INDEX_LOG_RELAYED
from service.repositories import outbox
from service.settings import Settings

log = logging.getLogger(__name__)

OPS = ("add", "move", "delete", "switch", "rollback", "commit", "reset")


@dataclass(frozen=True)
class Entry:
    id: str  # the stream id, "ms-seq"
    op: str
    model: str | None
    ids: list[int]
    ts: float


def stream_key(settings: Settings) -> str:
    return keys.indexlog_stream(settings)


def epoch_key(settings: Settings) -> str:
    return keys.indexlog_epoch(settings)


def ensure_epoch(r: redis_lib.Redis, settings: Settings) -> str:
    """The current stream epoch, created if Redis has none (first use, or after losing data)."""
    r.set(epoch_key(settings), uuid.uuid4().hex, nx=True)
    value = r.get(epoch_key(settings))
    return value.decode() if isinstance(value, bytes) else str(value)


def append(r: redis_lib.Redis, settings: Settings, op: str, model: str | None = None, ids: Iterable[int] = ()) -> str:
    """Append one entry; call only after the SQL transaction it describes has committed."""
    if op not in OPS:
        raise ValueError(f"unknown index-log op {op!r}; expected one of {OPS}")
    ensure_epoch(r, settings)
    fields: dict[FieldT, EncodableT] = {
        "op": op,
        "model": model or "",
        "ids": json.dumps([int(i) for i in ids]),
        "ts": repr(time.time()),
    }
    entry_id = r.xadd(stream_key(settings), fields, maxlen=settings.index_log_maxlen, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


@dataclass(frozen=True)
class Staged:
    """An entry written to the outbox inside the writer's transaction, to publish after the commit."""

    outbox_id: int
    op: str
    model: str | None
    ids: list[int]


def stage(session: Session, op: str, model: str | None = None, ids: Iterable[int] = ()) -> Staged:
    """Write the entry describing this transaction's change into the same transaction: it commits
    or rolls back with the change. Call :func:`publish` after the commit."""
    if op not in OPS:
        raise ValueError(f"unknown index-log op {op!r}; expected one of {OPS}")
    ids = [int(i) for i in ids]
    return Staged(outbox.add(session, op, model, ids), op, model, ids)


def publish(r: redis_lib.Redis, settings: Settings, staged: Staged) -> str | None:
    """Append a staged entry whose transaction has committed, then drop it from the outbox.

    Never raises: SQL already holds the change, so a Redis failure must not turn a successful
    write into an error. The entry stays staged and a follower publishes it (:func:`relay`); if
    only the delete fails, the entry is published twice, which replicas take idempotently."""
    if settings.failpoint == "before_publish" and settings.env == "test":
        os.kill(os.getpid(), signal.SIGKILL)  # the crash the outbox exists for (tests/e2e/test_outages.py)
    try:
        entry_id = append(r, settings, staged.op, staged.model, staged.ids)
    except redis_lib.RedisError:
        log.exception(
            "index log append failed (op=%s, %d ids); the entry stays in the outbox and a "
            "replica's follower publishes it",
            staged.op,
            len(staged.ids),
        )
        return None
    try:
        with session_scope(settings.sqlalchemy_url) as s:
            outbox.drop(s, [staged.outbox_id])
    except SQLAlchemyError:
        log.exception(
            "published index-log entry %s but could not drop outbox row %d; it will be published again (harmless)",
            entry_id,
            staged.outbox_id,
        )
    return entry_id


# Published late, these could act on a state that has moved on since (a rollback restores the
# parked vectors of its day); a full reload from SQL is right whatever happened in between.
LATE_AS_RESET = ("rollback", "commit", "reset")
RELAY_BATCH = 500


def relay(r: redis_lib.Redis, settings: Settings, min_age_s: float) -> int:
    """Publish outbox entries staged more than ``min_age_s`` ago: their writer died after its
    commit or could not reach Redis. Item entries (add, move, delete) and switches go out as
    they are (they re-read SQL when applied); a late rollback or commit goes out as one ``reset``.
    Returns how many staged entries were published.

    Replicas all run this. The rows are claimed in a write transaction (``FOR UPDATE SKIP
    LOCKED`` on PostgreSQL; SQLite serialises writers), so one replica publishes each; a Redis
    failure rolls the claim back and the rows wait for the next try."""
    url = settings.sqlalchemy_url
    cutoff = time.time() - min_age_s
    with read_scope(url) as s:  # the usual answer, without taking SQLite's write lock
        if not outbox.any_staged_before(s, cutoff):
            return 0
    with session_scope(url) as s:
        rows = outbox.claim_staged_before(s, cutoff, RELAY_BATCH)
        reset = False
        for row in rows:
            if row.op in LATE_AS_RESET:
                reset = True
            else:
                append(r, settings, row.op, row.model, json.loads(row.ids))
        if reset:
            append(r, settings, "reset")
        outbox.drop(s, [row.id for row in rows])
    if rows:
        INDEX_LOG_RELAYED.inc(len(rows))
        log.warning(
            "published %d index-log entries their writers had left staged (%s)",
            len(rows),
            ", ".join(sorted({row.op for row in rows})),
        )
    return len(rows)


def parse_entry(entry_id: bytes | str, fields: dict) -> Entry:
    def s(v: object) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    f = {s(k): s(v) for k, v in fields.items()}
    return Entry(
        id=s(entry_id),
        op=f.get("op", ""),
        model=f.get("model") or None,
        ids=[int(i) for i in json.loads(f.get("ids") or "[]")],
        ts=float(f.get("ts") or 0.0),
    )


def id_tuple(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True)
class StreamInfo:
    exists: bool
    last_id: str  # last generated id, "0-0" when the stream does not exist
    first_id: str | None  # oldest entry still held
    length: int
    entries_added: int | None  # every entry ever appended (Redis >= 7), trimmed ones included

    @property
    def trimmed(self) -> int | None:
        """How many of the oldest entries are gone (trimming only ever removes the oldest)."""
        return None if self.entries_added is None else self.entries_added - self.length


def stream_info(r: redis_lib.Redis, settings: Settings) -> StreamInfo:
    """One XINFO call, so the position and the entry count it reports agree with each other."""
    try:
        info = r.xinfo_stream(stream_key(settings))
    except redis_lib.ResponseError:  # no such key
        return StreamInfo(False, "0-0", None, 0, 0)

    def s(v: object) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    first = info.get("first-entry")
    added = info.get("entries-added")
    return StreamInfo(
        exists=True,
        last_id=s(info.get("last-generated-id", "0-0")),
        first_id=s(first[0]) if first else None,
        length=int(info.get("length", 0)),
        entries_added=int(added) if added is not None else None,
    )


def missed_entries(info: StreamInfo, position: str, ordinal: int) -> bool:
    """Whether entries after ``position`` (the ``ordinal``-th entry ever added) were trimmed away.

    Note that Redis's ``max-deleted-entry-id`` does not move on MAXLEN trimming, so it cannot
    tell; the count of entries ever added can. Servers older than Redis 7 lack that count, and
    then any gap between the position and the oldest entry held counts as missed (it may only
    mean the position itself was trimmed; a reload is the safe answer).
    """
    if info.trimmed is not None:
        return info.trimmed > ordinal
    return info.first_id is not None and id_tuple(info.first_id) > id_tuple(position)


def read_after(
    r: redis_lib.Redis, settings: Settings, last_id: str, *, count: int = 1000, block_ms: int | None = None
) -> list[Entry]:
    """Entries after ``last_id``, oldest first (at most ``count``; waits up to ``block_ms``)."""
    # RESP2 (the client's protocol here) replies [[stream, [(id, fields), ...]], ...]; redis-py's
    # return type also covers RESP3's dict shape
    reply = cast(list[list[Any]] | None, r.xread({stream_key(settings): last_id}, count=count, block=block_ms))
    entries: list[Entry] = []
    for _key, items in reply or []:
        for entry_id, fields in items:
            entries.append(parse_entry(entry_id, fields))
    return entries
