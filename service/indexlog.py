"""The index log: a Redis stream of changes to the gallery, tailed by every API replica.

Writers (API requests, backfill workers, upgrade control) commit to SQL first and only then
:func:`append`, so an entry always describes state already durable in SQL. Entries carry ids,
not vectors: a replica reads the current SQL state of those ids when it applies an entry,
which makes applying idempotent and lets a late replica converge to the truth.

Key ``{prefix}:indexlog`` (a stream trimmed to about ``index_log_maxlen`` entries) and
``{prefix}:indexlog:epoch`` (a random token created with the stream). A replica that finds the
epoch changed or gone knows Redis lost the stream (restart, flush) and reloads from SQL; one
whose position is older than the stream's trimmed tail knows it missed entries and reloads too.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

import redis as redis_lib

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
    return settings.redis_key("indexlog")


def epoch_key(settings: Settings) -> str:
    return settings.redis_key("indexlog", "epoch")


def ensure_epoch(r: redis_lib.Redis, settings: Settings) -> str:
    """The current stream epoch, created if Redis has none (first use, or after losing data)."""
    r.set(epoch_key(settings), uuid.uuid4().hex, nx=True)
    value = r.get(epoch_key(settings))
    return value.decode() if isinstance(value, bytes) else str(value)


def append(
    r: redis_lib.Redis, settings: Settings, op: str, model: str | None = None, ids: Iterable[int] = ()
) -> str:
    """Append one entry; call only after the SQL transaction it describes has committed."""
    if op not in OPS:
        raise ValueError(f"unknown index-log op {op!r}; expected one of {OPS}")
    ensure_epoch(r, settings)
    fields = {
        "op": op,
        "model": model or "",
        "ids": json.dumps([int(i) for i in ids]),
        "ts": repr(time.time()),
    }
    entry_id = r.xadd(stream_key(settings), fields, maxlen=settings.index_log_maxlen, approximate=True)
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def append_safely(
    r: redis_lib.Redis, settings: Settings, op: str, model: str | None = None, ids: Iterable[int] = ()
) -> str | None:
    """:func:`append` for request handlers: SQL already holds the change, so a Redis outage must
    not turn a successful write into an error. Replicas that miss the entry catch up when they
    next detect a lost or changed stream and reload from SQL."""
    ids = list(ids)
    try:
        return append(r, settings, op, model, ids)
    except redis_lib.RedisError:
        log.exception("index log append failed (op=%s, %d ids); replicas will reload from SQL", op, len(ids))
        return None


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
    max_deleted_id: str  # the highest id ever trimmed or deleted, "0-0" if none


def stream_info(r: redis_lib.Redis, settings: Settings) -> StreamInfo:
    try:
        info = r.xinfo_stream(stream_key(settings))
    except redis_lib.ResponseError:  # no such key
        return StreamInfo(False, "0-0", "0-0")

    def s(v: object) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    last = s(info.get("last-generated-id", "0-0"))
    # Redis >= 7 reports the highest trimmed id; older servers don't, and then the first
    # entry's id bounds it from below (an entry before the first one is gone).
    if "max-deleted-entry-id" in info:
        max_deleted = s(info["max-deleted-entry-id"])
    else:
        first = info.get("first-entry")
        max_deleted = "0-0"
        if first:
            ms, seq = id_tuple(s(first[0]))
            max_deleted = f"{ms}-{seq - 1}" if seq > 0 else f"{ms - 1}-{2**63}"
    return StreamInfo(True, last, max_deleted)


def read_after(
    r: redis_lib.Redis, settings: Settings, last_id: str, *, count: int = 1000, block_ms: int | None = None
) -> list[Entry]:
    """Entries after ``last_id``, oldest first (at most ``count``; waits up to ``block_ms``)."""
    reply = r.xread({stream_key(settings): last_id}, count=count, block=block_ms)
    entries: list[Entry] = []
    for _key, items in reply or []:
        for entry_id, fields in items:
            entries.append(parse_entry(entry_id, fields))
    return entries
