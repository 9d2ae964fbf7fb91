"""A backfill batch's write with the previous statements (``SELECT ... FOR UPDATE`` of the items,
``DELETE`` of any vector of the new model, ``INSERT`` of the vectors, ``UPDATE`` of the items'
model, ``UPDATE`` of the tasks) against the current ``upgrades.record_encoded`` (``UPDATE ...
RETURNING`` of the items, which also locks them, an ``INSERT ... ON CONFLICT DO UPDATE`` of the
vectors, ``UPDATE`` of the tasks), on PostgreSQL and on SQLite, side by side.

Why: on PostgreSQL the ``DELETE ... WHERE model = :new AND item_id IN (...)`` was planned on the
vectors' model index, whose statistics (taken before the upgrade) saw no vector of the new
model, and scanned every vector already backfilled, for every batch: quadratic in the gallery.

Per item of a 60,000-item gallery of Fashion-MNIST images scored by a real upgrade, every batch
landed in the queue's order: CPU time of this process (the worker's writer thread), CPU time of
every ``postgres`` process of this machine over the same span (the server's share: backends,
WAL writer, autovacuum; read from ``/proc``, so the server must run here), and wall time.
Variants alternate, each round on a fresh copy of the same scored database.

    nice .venv/bin/python benchmarks/vector_upsert.py   # -> benchmarks/results/vector_upsert.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from backfill_write import queue_order, scored_gallery
from index_bench import RESULTS, fresh_postgres, machine, table, write_json

from service.repositories import common, upgrades
from service.repositories import items as item_repo

HEADER = ["database", "statements", "client us/item", "server us/item", "wall us/item", "every round (client+server)"]


def record_encoded_delete_insert(session, upgrade_id: int, to_model: str, item_ids: Sequence[int], vectors: np.ndarray):
    """``upgrades.record_encoded`` as it was before the upsert (commit e1bdb17), kept to compare."""
    from sqlalchemy import bindparam, delete, select, update

    from service.db.schema import Embedding, Upgrade
    from service.repositories.common import vector_to_bytes
    from service.timestamps import utcnow

    vecs = Embedding.__table__
    delete_vectors = delete(vecs).where(vecs.c.model == bindparam("model"), vecs.c.item_id.in_(common.IDS))
    table = item_repo._items
    set_active = update(table).where(table.c.id.in_(common.IDS)).values(active_model=bindparam("model"))
    state = upgrades.lock_state(session, upgrade_id)
    by_id = {int(i): k for k, i in enumerate(item_ids)}
    conn = session.connection()
    present = sorted(item_repo.lock_items(session, list(by_id)))
    now, done = utcnow(), 0
    for chunk in common.id_chunks(present):
        conn.execute(delete_vectors, {"model": to_model, "ids": chunk})
        conn.execute(
            vecs.insert(),
            [
                {"item_id": i, "model": to_model, "vector": vector_to_bytes(vectors[by_id[i]]), "created_at": now}
                for i in chunk
            ],
        )
        conn.execute(set_active, {"model": to_model, "ids": chunk})
        done += int(conn.execute(upgrades._TASKS_DONE, {"b_upgrade": upgrade_id, "ids": chunk, "now": now}).rowcount)
    session.execute(update(Upgrade).where(Upgrade.id == upgrade_id).values(done=Upgrade.done + done))
    counts = session.execute(select(Upgrade.done, Upgrade.total).where(Upgrade.id == upgrade_id)).one()
    return upgrades.BatchOutcome(present, done, state, (int(counts[0]), int(counts[1])))


def postgres_cpu_seconds() -> float:
    """CPU seconds of every postgres process now alive, and of its children that exited
    (autovacuum workers come and go)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if not stat[stat.index("(") + 1 : stat.rindex(")")].startswith("postgres"):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += sum(int(f) for f in fields[11:15]) / tick  # utime stime cutime cstime
    return total


def land_all(url: str, batch: int, write: Callable, seed: int) -> dict[str, float]:
    from service.db.session import get_engine, session_scope

    uid, to_model, order = queue_order(url)
    rng = np.random.default_rng(seed)
    server0, wall0, client = postgres_cpu_seconds(), time.perf_counter(), 0.0
    for start in range(0, len(order), batch):
        ids = order[start : start + batch]
        vectors = rng.standard_normal((len(ids), 128), dtype=np.float32)
        t0 = time.process_time()
        with session_scope(url) as s:
            outcome = write(s, uid, to_model, ids, vectors)
        client += time.process_time() - t0
        if outcome.newly_done != len(ids):
            raise SystemExit(f"a batch landed {outcome.newly_done} of {len(ids)} items")
    wall = time.perf_counter() - wall0
    time.sleep(1.0)  # let the server's background work for these batches be counted
    server = postgres_cpu_seconds() - server0 if url.startswith("postgresql") else 0.0
    get_engine(url).dispose()
    get_engine(url, True).dispose()
    n = len(order)
    return {"client_us": 1e6 * client / n, "server_us": 1e6 * server / n, "wall_us": 1e6 * wall / n}


def main() -> None:

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2, help="rounds per variant and database")
    ap.add_argument("--databases", default="postgresql,sqlite")
    ap.add_argument(
        "--pg-admin-url",
        default=os.environ.get("HOTREFRESH_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "vector_upsert.json")
    args = ap.parse_args()
    variants = {"delete+insert": record_encoded_delete_insert, "upsert": upgrades.record_encoded}

    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    rows = []
    for database in args.databases.split(","):
        runs: dict[str, list[dict[str, float]]] = {v: [] for v in variants}
        with tempfile.TemporaryDirectory(prefix="vector-upsert-") as tmp:
            work = Path(tmp)
            name = f"vu_{uuid.uuid4().hex[:8]}"
            if database == "postgresql":
                with fresh_postgres(args.pg_admin_url, name) as url:
                    scored_gallery(work, args.n, args.batch, url)
                    for k in range(args.repeat):
                        for label in list(variants) if k % 2 == 0 else list(variants)[::-1]:
                            with fresh_postgres(args.pg_admin_url, f"{name}_{k}", template=name) as copy:
                                runs[label].append(land_all(copy, args.batch, variants[label], seed=k))
            else:
                db = scored_gallery(work, args.n, args.batch)
                for k in range(args.repeat):
                    for label in list(variants) if k % 2 == 0 else list(variants)[::-1]:
                        copy = work / f"{label.replace('+', '_')}-{k}.db"
                        shutil.copy(db, copy)
                        runs[label].append(land_all(f"sqlite:///{copy}", args.batch, variants[label], seed=k))
        results[database] = runs
        for label, rs in runs.items():
            med = {key: statistics.median(r[key] for r in rs) for key in ("client_us", "server_us", "wall_us")}
            rows.append(
                [
                    database,
                    label,
                    med["client_us"],
                    med["server_us"],
                    med["wall_us"],
                    " ".join(f"{r['client_us'] + r['server_us']:.0f}" for r in rs),
                ]
            )
            print(table(HEADER, rows[-1:]), flush=True)
    print(table(HEADER, rows))
    write_json(
        args.out,
        {
            "benchmark": "vector_upsert",
            "definition": __doc__.split("\n\n")[0],
            "config": {"n": args.n, "batch": args.batch, "repeat": args.repeat, "databases": args.databases},
            "machine": machine(),
            "runs": results,
            "median": {
                db: {label: {key: statistics.median(r[key] for r in rs) for key in rs[0]} for label, rs in runs.items()}
                for db, runs in results.items()
            },
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
