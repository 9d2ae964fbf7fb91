"""Crash-safe file writes for snapshots: write to a temporary name in the same directory, flush
to disk, then ``os.replace`` so a reader sees either the old file or the whole new one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npy(path: Path, arr: np.ndarray) -> None:
    _atomic_write(path, lambda f: np.save(f, arr, allow_pickle=False))


def load_npy(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def save_bytes(path: Path, data: bytes | np.ndarray) -> None:
    # ndarray.data is memoryview(arr); numpy's stubs give ndarray no __buffer__ before Python 3.12
    view = data.data if isinstance(data, np.ndarray) else memoryview(data)
    _atomic_write(path, lambda f: f.write(view))


def save_json(path: Path, obj: Any) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def save_arrays(directory: Path, stem: str, ids: np.ndarray, vecs: np.ndarray) -> dict[str, str]:
    """The part of a segment every backend writes: ids and vectors as ``.npy``."""
    files = {"ids": f"{stem}.ids.npy", "vectors": f"{stem}.vectors.npy"}
    save_npy(directory / files["ids"], np.ascontiguousarray(ids, dtype=np.int64))
    save_npy(directory / files["vectors"], np.ascontiguousarray(vecs, dtype=np.float32))
    return files


def load_arrays(directory: Path, files: dict[str, str]) -> tuple[np.ndarray, np.ndarray]:
    ids = load_npy(directory / files["ids"])
    vecs = load_npy(directory / files["vectors"])
    return ids, vecs
