"""The index log: a Redis stream of changes to the gallery, tailed by every API replica.

It is the transport of the in-process, replicated index backend: writers never call
:func:`append` themselves, they hand their change to a unit of work (``service.indexport``),
which commits SQL first and only then publishes through
``service.indexport.publishers.LogPublisher``, so an entry always describes state already
durable in SQL (and what is left staged, its relay publishes). Entries carry ids, not vectors:
a replica reads the current SQL state of those ids when it applies an entry, which makes
applying idempotent and lets a late replica converge to the truth.

Key ``{prefix}:indexlog`` (a stream trimmed to about ``index_log_maxlen`` entries) and
``{prefix}:indexlog:epoch`` (a random token created with the stream). A replica that finds the
epoch changed or gone knows Redis lost the stream (restart, flush) and reloads from SQL; one
whose position is older than the stream's trimmed tail knows it missed entries and reloads too.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import redis as redis_lib
from redis.typing import EncodableT, FieldT

from service import keys
from service.settings import Settings

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
