"""SQLite at 1M items: why a backfill batch's SQL costs more per item than at 100k, and whether
a connection setting takes the difference away (issue 25, item 4; B6 measured the whole
backfill at 0.51-0.57x its 100k rate from the first tenth on).

A synthetic gallery at schema head is built with the repository's own bulk paths, no images and
no model: ``items.add_items`` (external ids, labels, 64-hex image keys, one random 128-d float32
vector of an ``old`` model each), an upgrade row ``old -> new`` in ``running`` and its tasks by
``upgrades.replace_tasks`` with random priorities. Each N is built once. A second copy, "late",
has every task but the last ``--batches`` x 256 of the queue already landed (by
``record_encoded`` in large batches), so the end of an upgrade can be measured without landing
the whole middle for every configuration.

For every configuration (extra pragmas on top of what ``service.db.session`` sets), every
part (``first``: the first ``--batches`` batches of the queue on a fresh copy of the built
database; ``last``: the last ones on a fresh copy of "late") and every state of the writing
connection's cache (``cold``: empty, a freshly started worker; ``warm``: filled first by scanning
the B-trees a batch writes, a long-running worker), the benchmark lands batches of 256
ids in the queue's order the way a worker does (``benchmarks/backfill_write.py``'s ``land_all``):
the loader's read of the batch's image keys (``items.image_keys`` in a ``read_scope``), then one
``session_scope`` around ``upgrades.record_encoded``. After the write, what an API replica's
follower reads for the batch (``items.get_item_states`` in a ``read_scope``). Per item: CPU and
wall time of the read, of the write transaction (statements and commit) and of the follower's
read; from ``/proc/self/io`` the bytes and the
number of read syscalls (``rchar``, ``syscr``: SQLite reads every page it misses in its own cache
with one ``pread``), bytes read from storage (``read_bytes``) and bytes written (``wchar``: the
WAL and its checkpoints); minor and major page faults (a memory-mapped database reads its pages
by faults instead). Configurations alternate within each round, ``--repeat`` rounds, medians;
ratios are side by side in one run, on one machine, with the OS page cache holding the files
(the machine has far more memory than the databases).

Also recorded per N: database bytes per item, and the pages and depth of each B-tree
(``dbstat``). A checkpoint interval needs a window of many checkpoints to be compared (over 100
batches a 65,536-page interval holds almost none): ``--batches 600 --parts first --states warm``.
Results and what they mean: docs/service.md, "SQLite at scale".

    nice .venv/bin/python benchmarks/sqlite_scale.py   # -> benchmarks/results/sqlite_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from index_bench import RESULTS, machine, table, write_json
from sqlalchemy import event, text

from service.db.migrate import upgrade_head
from service.db.schema import Upgrade
from service.db.session import get_engine, read_scope, session_scope
from service.repositories import items, upgrades

DIM = 128
BUILD_CHUNK = 10_000

# name -> pragmas run on every connection after service.db.session's own (the first is the
# service as it is: none added).
CONFIGS: dict[str, list[str]] = {
    "cache 64 MiB (current)": [],
    "cache 256 MiB": ["PRAGMA cache_size=-262144"],
    "cache 1 GiB": ["PRAGMA cache_size=-1048576"],
    "cache 64 MiB + mmap 2 GiB": ["PRAGMA mmap_size=2147418112"],
    "cache 64 MiB + checkpoint 64k pages": ["PRAGMA wal_autocheckpoint=65536"],
    "cache 1 GiB + checkpoint 64k pages": ["PRAGMA cache_size=-1048576", "PRAGMA wal_autocheckpoint=65536"],
    "cache 64 MiB + checkpoint 256k pages": ["PRAGMA wal_autocheckpoint=262144"],
}


def url_of(db: Path) -> str:
    return f"sqlite:///{db}"


def build(db: Path, n: int, seed: int) -> dict[str, float]:
    """The gallery of ``n`` items on ``old``, an upgrade to ``new`` running, its tasks scored."""
    url = url_of(db)
    upgrade_head(url)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for start in range(0, n, BUILD_CHUNK):
        m = min(BUILD_CHUNK, n - start)
        vectors = rng.standard_normal((m, DIM), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        new = [
            items.NewItem(f"gallery-{start + k:08d}.png", f"class-{(start + k) % 10}", os.urandom(32).hex(), {"old": v})
            for k, v in enumerate(vectors)
        ]
        with session_scope(url) as s:
            items.add_items(s, new, "old")
    ingest_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with session_scope(url) as s:
        up = upgrades.add_upgrade(
            s, Upgrade(from_model="old", to_model="new", strategy="margin", state="running", batch_size=256, total=n)
        )
        ids = np.arange(1, n + 1, dtype=np.int64)
        kept, _ = upgrades.replace_tasks(s, up.id, ids, rng.random(n))
        if len(kept) != n:
            raise SystemExit(f"replace_tasks kept {len(kept)} of {n} tasks")
    tasks_s = time.perf_counter() - t0
    dispose(url)
    checkpoint(db)
    return {"ingest_s": ingest_s, "tasks_s": tasks_s}


def dispose(url: str) -> None:
    get_engine(url).dispose()
    get_engine(url, True).dispose()


def checkpoint(db: Path) -> None:
    with sqlite3.connect(db) as c:
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def copy_db(src: Path, dst: Path) -> None:
    shutil.copy(src, dst)


def remove_db(db: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def queue_order(url: str) -> tuple[int, str, list[int]]:
    """The upgrade's id, its new model, and its tasks' item ids in the queue's order."""
    from backfill_write import queue_order as order

    return order(url)


def land_bulk(db: Path, ids: list[int], seed: int, chunk: int = 20_000) -> float:
    """Land ``ids`` (any order) in large batches: the middle of an upgrade, quickly."""
    url = url_of(db)
    uid, to_model, _ = queue_order(url)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for start in range(0, len(ids), chunk):
        part = sorted(ids[start : start + chunk])
        with session_scope(url) as s:
            out = upgrades.record_encoded(
                s, uid, to_model, part, rng.standard_normal((len(part), DIM), dtype=np.float32)
            )
        if out.newly_done != len(part):
            raise SystemExit(f"a bulk batch landed {out.newly_done} of {len(part)} items")
    dispose(url)
    checkpoint(db)
    return time.perf_counter() - t0


def btrees(db: Path) -> dict[str, dict[str, int]]:
    """Pages and depth (levels, the leaves included) of every table and index."""
    with sqlite3.connect(db) as c:
        rows = c.execute(
            "SELECT name, count(*), max(length(path) - length(replace(path, '/', ''))) FROM dbstat "
            "WHERE pagetype IN ('internal', 'leaf') GROUP BY name ORDER BY count(*) DESC"
        ).fetchall()
    return {str(name): {"pages": int(pages), "depth": int(depth)} for name, pages, depth in rows}


def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


COUNTERS = ("cpu_s", "wall_s", "rchar", "syscr", "read_bytes", "wchar", "minflt", "majflt")


def sample() -> dict[str, float]:
    io = proc_io()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "cpu_s": time.process_time(),
        "wall_s": time.perf_counter(),
        "rchar": io["rchar"],
        "syscr": io["syscr"],
        "read_bytes": io["read_bytes"],
        "wchar": io["wchar"],
        "minflt": ru.ru_minflt,
        "majflt": ru.ru_majflt,
    }


def measured(fn: Callable[[], Any], into: dict[str, float]) -> Any:
    a = sample()
    out = fn()
    b = sample()
    for k in COUNTERS:
        into[k] = into.get(k, 0.0) + b[k] - a[k]
    return out


# Full scans of every B-tree a batch writes at random places (the items, the vectors' key, the
# tasks, their key and pending index), on the writing connection: its page cache then holds what
# a worker's long-lived connection would after landing many batches (as much as the cache takes).
WARM_SCANS = (
    "SELECT sum(length(active_model)) FROM gallery_items",
    "SELECT count(*) FROM embeddings INDEXED BY sqlite_autoindex_embeddings_1 WHERE item_id > 0",
    "SELECT sum(attempts) FROM backfill_tasks",
    "SELECT count(*) FROM backfill_tasks INDEXED BY sqlite_autoindex_backfill_tasks_1 WHERE upgrade_id > 0",
    "SELECT count(*) FROM backfill_tasks INDEXED BY ix_backfill_tasks_pending "
    "WHERE upgrade_id > 0 AND status = 'pending'",
)


def warm_up(url: str) -> None:
    with session_scope(url) as s:
        for q in WARM_SCANS:
            s.execute(text(q))


def land(
    db: Path, ids: list[int], pragmas: list[str], batch: int, seed: int, warm: bool = False
) -> dict[str, dict[str, float]]:
    """Land ``ids`` in the queue's order, ``batch`` at a time, as a worker does: per item,
    every counter of the read (image keys) and of the write transaction, summed over the part.
    ``warm``: the writing connection's cache filled first (``warm_up``), as a long-running
    worker's would be; else it starts empty, as a freshly started worker's does."""
    url = url_of(db)
    if pragmas:

        def extra(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            for p in pragmas:
                cur.execute(p)
            cur.close()

        for readonly in (False, True):  # after the service's own listeners, so these win
            event.listen(get_engine(url, readonly), "connect", extra)
    uid, to_model, _ = queue_order(url)
    if warm:
        warm_up(url)
    rng = np.random.default_rng(seed)
    read: dict[str, float] = {}
    write: dict[str, float] = {}
    followed: dict[str, float] = {}
    for start in range(0, len(ids), batch):
        part = ids[start : start + batch]
        vectors = rng.standard_normal((len(part), DIM), dtype=np.float32)

        def lookup(part: list[int] = part) -> dict[int, str]:
            with read_scope(url) as s:
                return items.image_keys(s, part)

        def write_batch(part: list[int] = part, vectors: np.ndarray = vectors) -> upgrades.BatchOutcome:
            with session_scope(url) as s:
                return upgrades.record_encoded(s, uid, to_model, part, vectors)

        keys = measured(lookup, read)
        if len(keys) != len(part):
            raise SystemExit(f"{len(keys)} image keys for {len(part)} ids")
        outcome = measured(write_batch, write)
        if outcome.newly_done != len(part):
            raise SystemExit(f"a batch landed {outcome.newly_done} of {len(part)} items")
        states = measured(lambda part=part: follow(url, part), followed)
        if len(states) != len(part) or any(st.active_model != to_model for st in states.values()):
            raise SystemExit("the follower's read does not see the batch on the new model")
    dispose(url)
    return {
        "read": {k: v / len(ids) for k, v in read.items()},
        "write": {k: v / len(ids) for k, v in write.items()},
        "follow": {k: v / len(ids) for k, v in followed.items()},
    }


def follow(url: str, ids: list[int]) -> dict[int, items.ItemState]:
    """What an API replica's follower reads for a batch it saw in the index log
    (``service.api.serving.replica``: ``get_item_states`` in a ``read_scope``)."""
    with read_scope(url) as s:
        return items.get_item_states(s, ids)


def run_n(work: Path, n: int, args: argparse.Namespace) -> dict[str, Any]:
    base = work / f"base-{n}.db"
    part = args.batches * args.batch
    if 2 * part > n:
        raise SystemExit(f"--batches {args.batches} x {args.batch} is more than half of {n} items")
    wheres = args.parts.split(",")
    done = work / f"built-{n}.json"  # a kept --workdir's databases are reused
    if done.exists():
        built = json.loads(done.read_text())
        _, _, order = queue_order(url_of(base))
    else:
        t0 = time.perf_counter()
        built = build(base, n, seed=n)
        built["build_s"] = time.perf_counter() - t0
        _, _, order = queue_order(url_of(base))
        done.write_text(json.dumps(built))
    late = work / f"late-{n}-{part}.db"
    if "last" in wheres and not late.exists():
        copy_db(base, work / "late.tmp")
        built["late_s"] = land_bulk(work / "late.tmp", order[: n - part], seed=n + 1)
        (work / "late.tmp").rename(late)
    size = base.stat().st_size
    trees = btrees(base)
    late_trees = btrees(late) if "last" in wheres else None
    print(f"N={n}: built in {built['build_s']:.0f} s, {size / n:.0f} bytes/item")
    parts = {
        f"{where} {state}": (src, ids, state == "warm")
        for state in args.states.split(",")
        for where, src, ids in (("first", base, order[:part]), ("last", late, order[-part:]))
        if where in wheres
    }
    runs: dict[str, dict[str, list[dict[str, dict[str, float]]]]] = {c: {p: [] for p in parts} for c in CONFIGS}
    for r in range(args.repeat):
        for c, (name, pragmas) in enumerate(CONFIGS.items()):  # alternated: each sees the same machine
            for k, (pname, (src, ids, warm)) in enumerate(parts.items()):
                db = work / f"run-{r}-{c}-{k}.db"  # its own URL, so its own engine and listeners
                copy_db(src, db)
                runs[name][pname].append(land(db, ids, pragmas, args.batch, seed=r, warm=warm))
                remove_db(db)
                w = runs[name][pname][-1]["write"]
                print(
                    f"  N={n} round {r} {name:36s} {pname:10s}: write {1e6 * w['cpu_s']:6.1f} us CPU "
                    f"{1e6 * w['wall_s']:6.1f} us wall {w['syscr']:5.1f} preads/item",
                    flush=True,
                )
    med: dict[str, dict[str, dict[str, dict[str, float]]]] = {
        c: {
            p: {
                stage: {k: statistics.median(run[stage][k] for run in runs[c][p]) for k in COUNTERS}
                for stage in ("read", "write", "follow")
            }
            for p in parts
        }
        for c in CONFIGS
    }
    return {
        "items": n,
        "database_bytes": size,
        "database_bytes_per_item": size / n,
        "late_database_bytes": late.stat().st_size if "last" in wheres else None,
        "btrees": trees,
        "btrees_late": late_trees,
        "build": built,
        "median_per_item": med,
        "rounds_per_item": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="100000,1000000", help="gallery sizes, comma-separated")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--batches", type=int, default=100, help="batches landed in each part (first, last)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--parts", default="first,last", help="which batches of the queue: first, last")
    ap.add_argument("--states", default="cold,warm", help="the writing connection's cache at the start: cold, warm")
    ap.add_argument("--only", default="", help="configurations to run (comma-separated prefixes of their names)")
    ap.add_argument("--out", type=Path, default=RESULTS / "sqlite_scale.json")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the built databases here, reuse them (default: a temporary folder)",
    )
    args = ap.parse_args()
    if args.only:
        wanted = [w.strip() for w in args.only.split(",")]
        for name in list(CONFIGS):
            if not any(name.startswith(w) for w in wanted):
                del CONFIGS[name]
    sizes = [int(x) for x in args.n.split(",")]
    with tempfile.TemporaryDirectory(prefix="sqlite-scale-") as tmp:
        results = []
        for n in sizes:
            work = (args.workdir or Path(tmp)) / str(n)
            work.mkdir(parents=True, exist_ok=True)
            results.append(run_n(work, n, args))
    headers = [
        "N",
        "configuration",
        "part",
        "write us CPU",
        "write us wall",
        "read us CPU",
        "follow us CPU",
        "preads w/r/f",
        "KiB written",
    ]
    rows = []
    for res in results:
        for c, parts in res["median_per_item"].items():
            for p, st in parts.items():
                w, rd, f = st["write"], st["read"], st["follow"]
                rows.append(
                    [
                        res["items"],
                        c,
                        p,
                        1e6 * w["cpu_s"],
                        1e6 * w["wall_s"],
                        1e6 * rd["cpu_s"],
                        1e6 * f["cpu_s"],
                        f"{w['syscr']:.2f}/{rd['syscr']:.2f}/{f['syscr']:.2f}",
                        w["wchar"] / 1024,
                    ]
                )
    print(table(headers, rows))
    ratios: dict[str, Any] = {}
    if len(results) == 2:
        small, large = results
        for c in CONFIGS:
            ratios[c] = {
                p: {
                    "write_cpu_large_over_small": large["median_per_item"][c][p]["write"]["cpu_s"]
                    / small["median_per_item"][c][p]["write"]["cpu_s"],
                    "write_wall_large_over_small": large["median_per_item"][c][p]["write"]["wall_s"]
                    / small["median_per_item"][c][p]["write"]["wall_s"],
                }
                for p in small["median_per_item"][c]
            }
        print("large / small N, write CPU per item:")
        for c, r in ratios.items():
            print(f"  {c:36s} " + "  ".join(f"{p} {v['write_cpu_large_over_small']:.2f}" for p, v in r.items()))
    write_json(
        args.out,
        {
            "benchmark": "sqlite_scale",
            "definition": __doc__.split("\n\n")[0],
            "config": {
                "n": sizes,
                "batch": args.batch,
                "batches_per_part": args.batches,
                "repeat": args.repeat,
                "states": args.states.split(","),
                "parts": args.parts.split(","),
                "dim": DIM,
                "configurations": CONFIGS,
                "sqlite": sqlite3.sqlite_version,
            },
            "machine": machine(),
            "runs": results,
            "ratios": ratios,
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
