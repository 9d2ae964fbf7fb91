"""Index snapshots of a replica, so a restart loads its vectors with a few bulk array reads and
replays only the index log written since, instead of reading every vector from SQL.

Layout under ``HOTREFRESH_SNAPSHOT_DIR``: one directory per snapshot (``MixedIndex.save``) and
``latest.json`` naming the newest with the log position it reflects (stream id, the entry's
ordinal, the stream epoch) and the query model. A snapshot is only used when that position is
still in the stream of the same epoch (nothing it lacks was trimmed or lost); otherwise the
replica loads from SQL as usual. Writers (replicas shutting down, possibly several uvicorn
workers at once) are serialised by a lock file; the pointer is replaced atomically and older
snapshot directories are removed after it moves.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from service.index import MixedIndex

log = logging.getLogger(__name__)

POINTER = "latest.json"


@dataclass(frozen=True)
class SnapshotInfo:
    directory: str  # name of the snapshot directory under the snapshot root
    last_id: str
    ordinal: int
    epoch: str
    query_model: str | None
    database: str  # the database URL without its password: a snapshot never crosses databases


def save(root: Path, index: MixedIndex, info: SnapshotInfo) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        target = root / info.directory
        index.save(target)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".latest-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(info), f)
        os.replace(tmp, root / POINTER)
        for path in root.iterdir():
            if path.is_dir() and path.name != info.directory:
                shutil.rmtree(path, ignore_errors=True)
    return target


def latest(root: Path) -> SnapshotInfo | None:
    try:
        data = json.loads((root / POINTER).read_text())
        return SnapshotInfo(**data)
    except (OSError, ValueError, TypeError):
        return None


def load(root: Path, info: SnapshotInfo, backend: object) -> MixedIndex:
    """Raises ``service.index.SnapshotError`` (a ValueError) if the files are missing or broken."""
    return MixedIndex.load(root / info.directory, backend)  # type: ignore[arg-type]


def database_identity(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def new_name() -> str:
    return f"snap-{uuid.uuid4().hex[:12]}"
