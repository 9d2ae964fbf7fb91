"""Helpers shared by the benchmarks: synthetic vectors, timing, output, throw-away databases.

Importable from a script run as ``python benchmarks/<name>.py`` (its folder is on sys.path);
puts the repository root on sys.path too, so the scripts also run from a bare checkout where
the package is not installed (the rented GPU machine)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"


def unit_vectors(n: int, dim: int, seed: int, chunk: int = 131_072) -> np.ndarray:
    """Random L2-normalised float32 rows, generated in chunks to keep the peak near the result."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, chunk):
        x = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + len(x)] = x
    return out


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def summary(seconds: list[float]) -> dict[str, float]:
    s = sorted(seconds)
    return {
        "n": len(s),
        "median_s": statistics.median(s),
        "mean_s": statistics.fmean(s),
        "p90_s": s[min(len(s) - 1, int(0.9 * len(s)))],
        "min_s": s[0],
        "max_s": s[-1],
    }


def machine() -> dict[str, Any]:
    import faiss

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[f"{c:.4g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


@contextmanager
def fresh_postgres(admin_url: str, name: str, template: str | None = None) -> Iterator[str]:
    """A throw-away PostgreSQL database for one trial (empty, or a copy of ``template``), dropped
    afterwards; yields its URL."""
    from sqlalchemy import create_engine, text

    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        if template is None:
            c.execute(text(f'CREATE DATABASE "{name}"'))
        else:  # a template must have no other session
            c.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :t AND pid <> pg_backend_pid()"
                ),
                {"t": template},
            )
            c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        from service.db.session import get_engine

        get_engine.cache_clear()  # close this process's pool before the drop
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
