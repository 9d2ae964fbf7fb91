"""The SQL bulk paths of a gallery at scale, on PostgreSQL and on SQLite side by side: the ingest
write (``items.add_items`` in one transaction per batch of 256 items with one 128-d vector each,
as ``gallery.add_batch`` calls it, without decoding or encoding images) and the full read of every
active vector (``items.iter_active_vectors``, what a replica's start-up from SQL reads).

Each database starts empty and migrated (a fresh PostgreSQL database; a fresh SQLite file). Per
database: ingest items/s (wall), CPU us per item of this process (client) and of every
``postgres`` process of this machine (server, from ``/proc``: the server must run here), the
time spent in each kind of statement (SQLAlchemy's cursor events: where the time goes), then
the full read's wall seconds and this process's CPU seconds. ``--label`` names the code being
measured (``before`` / ``after``); records of other labels already in ``--out`` are kept, so
two runs of two checkouts land side by side in one file.

    nice .venv/bin/python benchmarks/pg_bulk.py --label after   # -> benchmarks/results/pg_bulk.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from index_bench import RESULTS, fresh_postgres, machine, table, unit_vectors, write_json
from sqlalchemy import Engine, event
from vector_upsert import postgres_cpu_seconds

from service.db.migrate import upgrade_head
from service.db.session import get_engine, read_scope, session_scope
from service.repositories import items as item_repo

HEADER = ["label", "database", "ingest items/s", "client us/item", "server us/item", "read s", "read CPU s"]
MODEL = "m1"


def external_id(k: int) -> str:
    return f"item-{k:08d}"


@contextmanager
def statement_times() -> Iterator[dict[str, list[float]]]:
    """Seconds and count of each kind of statement run (its first words), on every engine:
    ``get_engine(url)`` and ``get_engine(url, False)`` are two cache entries, two engines."""
    spent: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])

    def before(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        kind = " ".join(statement.split()[:3])[:48] + (" (many)" if many else "")
        spent[kind][0] += time.perf_counter() - conn.info.pop("bench_t0")
        spent[kind][1] += 1

    event.listen(Engine, "before_cursor_execute", before)
    event.listen(Engine, "after_cursor_execute", after)
    try:
        yield spent
    finally:
        event.remove(Engine, "before_cursor_execute", before)
        event.remove(Engine, "after_cursor_execute", after)


def ingest(url: str, n: int, batch: int, dim: int) -> dict[str, Any]:
    vectors = unit_vectors(n, dim, seed=0)
    server0, wall0, client = postgres_cpu_seconds(), time.perf_counter(), 0.0
    with statement_times() as spent:
        for start in range(0, n, batch):
            new = [
                item_repo.NewItem(external_id(k), f"label-{k % 10}", f"{k:064x}", {MODEL: vectors[k]})
                for k in range(start, min(n, start + batch))
            ]
            t0 = time.process_time()
            with session_scope(url) as s:
                rows = item_repo.add_items(s, new, active_model=MODEL)
            client += time.process_time() - t0
            if len(rows) != len(new) or rows[-1].external_id != new[-1].external_id:
                raise SystemExit(f"a batch returned {len(rows)} rows for {len(new)} items")
    wall = time.perf_counter() - wall0
    time.sleep(1.0)  # the server's background work for these batches (WAL writer, autovacuum)
    server = postgres_cpu_seconds() - server0 if url.startswith("postgresql") else 0.0
    return {
        "items_per_s": n / wall,
        "wall_s": wall,
        "client_us_per_item": 1e6 * client / n,
        "server_us_per_item": 1e6 * server / n,
        "statements": {k: {"s": round(v[0], 4), "count": v[1]} for k, v in sorted(spent.items())},
    }


def full_read(url: str, n: int, dim: int) -> dict[str, Any]:
    expected = unit_vectors(n, dim, seed=0)
    wall0, cpu0, got = time.perf_counter(), time.process_time(), 0
    checksum = 0.0
    with read_scope(url) as s:
        for chunk in item_repo.iter_active_vectors(s):
            got += len(chunk.ids)
            checksum += float(chunk.vectors[:, 0].sum())
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if got != n or abs(checksum - float(expected[:, 0].sum())) > 1e-2:
        raise SystemExit(f"the full read returned {got} of {n} vectors (checksum {checksum})")
    return {"wall_s": wall, "cpu_s": cpu}


def run_one(url: str, n: int, batch: int, dim: int) -> dict[str, Any]:
    upgrade_head(url)
    out = {"ingest": ingest(url, n, batch, dim), "read": full_read(url, n, dim)}
    for readonly in (False, True):
        get_engine(url, readonly).dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--label", default="after", help="the code measured: before / after")
    ap.add_argument("--databases", default="postgresql,sqlite")
    ap.add_argument(
        "--pg-admin-url",
        default=os.environ.get("HOTREFRESH_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "pg_bulk.json")
    args = ap.parse_args()

    results: dict[str, Any] = {}
    for database in args.databases.split(","):
        if database == "postgresql":
            with fresh_postgres(args.pg_admin_url, f"pgb_{uuid.uuid4().hex[:8]}") as url:
                results[database] = run_one(url, args.n, args.batch, args.dim)
        else:
            with tempfile.TemporaryDirectory(prefix="pg-bulk-") as tmp:
                results[database] = run_one(f"sqlite:///{Path(tmp) / 'gallery.db'}", args.n, args.batch, args.dim)
        r = results[database]
        print(
            table(
                HEADER,
                [
                    [
                        args.label,
                        database,
                        r["ingest"]["items_per_s"],
                        r["ingest"]["client_us_per_item"],
                        r["ingest"]["server_us_per_item"],
                        r["read"]["wall_s"],
                        r["read"]["cpu_s"],
                    ]
                ],
            ),
            flush=True,
        )
        print(json.dumps(r["ingest"]["statements"], indent=1), flush=True)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {}
    doc.update(
        {
            "benchmark": "pg_bulk",
            "definition": __doc__.split("\n\n")[0],
            "config": {"n": args.n, "batch": args.batch, "dim": args.dim, "databases": args.databases},
            "machine": machine(),
        }
    )
    doc.setdefault("runs", {})[args.label] = {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), **results}
    write_json(args.out, doc)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
