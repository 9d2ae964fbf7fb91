"""Times as the service stores and shows them: always UTC.

SQLite hands back naive datetimes for timezone-aware columns; every time we store is UTC, so a
naive value read back is UTC, on the wire and in arithmetic alike.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def seconds_since(ts: datetime | None) -> float | None:
    if ts is None:
        return None
    return max(0.0, (utcnow() - as_utc(ts)).total_seconds())


UtcDatetime = Annotated[datetime, AfterValidator(as_utc)]
