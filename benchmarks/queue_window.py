"""The backfill queue's Redis memory with the bounded window, at 100k and 1M items: a whole
upgrade's queue drained the way workers drain it (top up from SQL, lease a batch, ack it, mark
its tasks done in SQL), on a real PostgreSQL and a redis-server of the run's own.

Two layouts side by side on the same tasks:

- ``window``: Redis holds at most ``--window`` queued ids (``HOTREFRESH_QUEUE_WINDOW``, default
  20,000), refilled from SQL in the queue's order (``service.queue``, migration 0005);
- ``every id``: the window as large as the gallery, which is what Redis held before (a ZSET
  member and a HASH field per item of the upgrade).

Reported per N and layout: Redis's peak ``used_memory`` over the drain (the server's whole
memory: the run's own server holds nothing else) and the queue keys' peak ``MEMORY USAGE``,
sampled after every batch; the refills from SQL (how many, their total and slowest seconds);
the drain's wall time; and whether the leased order was exactly the offline order (priority
descending, ties by ascending id). The tasks are made in SQL directly (``generate_series``:
this measures the queue, not the ingest), with priorities on a coarse grid so that ties cross
refills.

    nice .venv/bin/python benchmarks/queue_window.py   # -> benchmarks/results/queue_window.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from index_bench import RESULTS, fresh_postgres, machine, table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _tasks(url: str, n: int) -> None:
    """n gallery items and one running upgrade with a task each, priorities on a grid of 1/64."""
    from sqlalchemy import text

    from service.db.migrate import upgrade_head
    from service.db.session import session_scope

    upgrade_head(url)
    with session_scope(url) as s:
        s.execute(
            text(
                "INSERT INTO gallery_items (id, external_id, image_key, active_model, created_at) "
                "SELECT g, 'x' || g, 'k', 'old', now() FROM generate_series(1, :n) g"
            ),
            {"n": n},
        )
        s.execute(
            text(
                "INSERT INTO upgrades (id, from_model, to_model, strategy, state, batch_size, total, done, "
                "failed, checkpoints, created_at, updated_at) VALUES (1,'old','new','margin','running',"
                "256,:n,0,0,'[]',now(),now())"
            ),
            {"n": n},
        )
        s.execute(
            text(
                "INSERT INTO backfill_tasks (upgrade_id, item_id, priority, status, attempts, updated_at) "
                "SELECT 1, g, floor(random() * 64) / 64.0, 'pending', 0, now() FROM generate_series(1, :n) g"
            ),
            {"n": n},
        )
    with session_scope(url) as s:
        s.execute(text("ANALYZE backfill_tasks"))


def one(url: str, redis_url: str, n: int, window: int, batch: int) -> dict[str, Any]:
    import redis as redis_lib
    from sqlalchemy import text

    from service.db.session import read_scope, session_scope
    from service.queue import BackfillQueue
    from service.repositories import upgrades
    from service.settings import Settings

    prefix = f"qw-{uuid.uuid4().hex[:6]}"
    settings = Settings(redis_prefix=prefix, queue_window=window, database_url=url)
    r = redis_lib.Redis.from_url(redis_url)
    r.flushall()
    base = int(r.info("memory")["used_memory"])
    with session_scope(url) as s:
        s.execute(text("UPDATE backfill_tasks SET status = 'pending' WHERE upgrade_id = 1"))
    q = BackfillQueue(r, settings, 1)
    refills: list[float] = []

    def load(after: tuple[float, int] | None, limit: int) -> list[tuple[int, float]]:
        t = time.perf_counter()
        with read_scope(url) as s:
            out = upgrades.pending_after(s, 1, after, limit)
        refills.append(time.perf_counter() - t)
        return out

    t0 = time.perf_counter()
    with read_scope(url) as s:  # scoring has the whole list at hand, in the queue's order
        first = upgrades.pending_after(s, 1, None, n)
    q.start(first)
    del first
    start_s = time.perf_counter() - t0
    peak = int(r.info("memory")["used_memory"])  # right after scoring filled it
    queue_peak, leased_order = sum(r.memory_usage(k) or 0 for k in q.keys), []
    t0 = time.perf_counter()
    while True:
        q.top_up(load, need=batch)
        ids = q.lease(batch, 600)
        if not ids:
            break
        leased_order += ids
        with session_scope(url) as s:
            s.execute(
                text("UPDATE backfill_tasks SET status = 'done' WHERE upgrade_id = 1 AND item_id = ANY(:ids)"),
                {"ids": ids},
            )
        q.ack(ids)
        peak = max(peak, int(r.info("memory")["used_memory"]))
        queue_peak = max(queue_peak, sum(r.memory_usage(k) or 0 for k in q.keys))
    drain_s = time.perf_counter() - t0
    with read_scope(url) as s:
        rows = s.execute(text("SELECT item_id, priority FROM backfill_tasks WHERE upgrade_id = 1")).all()
    offline = [int(i) for i, _ in sorted(rows, key=lambda ip: (-ip[1], ip[0]))]
    q.clear()
    return {
        "items": n,
        "layout": "every id" if window >= n else f"window {window}",
        "redis_peak_used_mib": peak / 2**20,
        "redis_peak_over_empty_mib": (peak - base) / 2**20,
        "queue_keys_peak_mib": queue_peak / 2**20,
        "start_s": start_s,
        "refills": len(refills),
        "refill_total_s": sum(refills),
        "refill_max_s": max(refills, default=0.0),
        "drain_s": drain_s,
        "exact_offline_order": leased_order == offline,
    }


def main() -> None:
    from cli.launcher import System

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="100000,1000000", help="comma-separated gallery sizes")
    ap.add_argument("--window", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument(
        "--pg-admin-url",
        default=os.environ.get("HOTREFRESH_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "queue_window.json")
    args = ap.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="qw-") as tmp, System(Path(tmp) / "redis") as system:
        redis_url = system.start_redis()
        for n in [int(x) for x in args.n.split(",")]:
            with fresh_postgres(args.pg_admin_url, f"qw_{uuid.uuid4().hex[:8]}") as url:
                _tasks(url, n)
                for window in (args.window, n):
                    runs.append(one(url, redis_url, n, window, args.batch))
                    print(runs[-1], flush=True)
    keys = [k for k in runs[0] if k not in ("items", "layout")]
    headers = ["measure", *[f"N={x['items']} {x['layout']}" for x in runs]]
    print(table(headers, [[k, *[x[k] for x in runs]] for k in keys]))
    windowed = [x for x in runs if x["layout"] != "every id"]
    summary = {}
    if len(windowed) > 1:
        summary["redis_peak_ratio_largest_over_smallest"] = (
            windowed[-1]["redis_peak_used_mib"] / windowed[0]["redis_peak_used_mib"]
        )
    write_json(
        args.out,
        {
            "benchmark": "the backfill queue's Redis memory: the bounded window against every id",
            "machine": machine(),
            "config": {"window": args.window, "batch": args.batch, "database": "postgresql"},
            "summary": summary,
            "runs": runs,
        },
    )
    print(summary, f"-> {args.out}")


if __name__ == "__main__":
    main()
