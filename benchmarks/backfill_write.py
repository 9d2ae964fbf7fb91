"""A backfill batch's SQL write (``upgrades.record_encoded``: vectors, items' active model, tasks
done, the counter, one transaction and its commit) in CPU time per item, on a real SQLite gallery
of Fashion-MNIST images scored by a real upgrade, with the table layout before and after
migration 0002, side by side.

- ``before``: schema 0001 (an ``(upgrade_id, status)`` index on the tasks, an index on the
  items' active model) and the tasks inserted in item-id order, as scoring used to insert them;
- ``after``: schema head (partial indexes on pending and finished tasks, no active-model index)
  and the tasks inserted in the queue's order, as ``upgrades.replace_tasks`` now does.

Both copies start from the same scored gallery and land the same batches (256 ids in the
queue's order, the same vectors) through the same code; the two layouts alternate, ``--repeat``
rounds each on a fresh copy. CPU time, not wall time: it is what the writer thread takes from
the core the encoder shares (benchmark B1).

    nice .venv/bin/python benchmarks/backfill_write.py   # -> benchmarks/results/backfill_write.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from index_bench import RESULTS, machine, table, write_json

from service.repositories import upgrades

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HEADER = ["layout", "us CPU / item (median)", "every round", "first quarter", "last quarter"]


def scored_gallery(work: Path, n: int, batch: int, database_url: str | None = None) -> Path:
    """A migrated database (SQLite in ``work`` unless ``database_url`` names another) holding
    ``n`` gallery items on an old model and an upgrade to a compatible new one, scored (tasks
    written, ``running``); returns the SQLite file."""
    import redis as redis_lib

    from models.data import load_fashion_mnist
    from service.db.session import session_scope
    from service.imagestore import image_store_for
    from service.registry import EncoderCache
    from service.settings import Settings
    from service.upgrade import control
    from service.upgrade.scoring import run_scoring
    from tests.utils.checkpoints import make_tiny_checkpoint
    from tests.utils.gallery import build_gallery

    prefix = f"bw-{uuid.uuid4().hex[:8]}"
    os.environ.update(
        {
            "HOTREFRESH_DATA_DIR": str(work),
            "HOTREFRESH_DATABASE_URL": database_url or f"sqlite:///{work / 'gallery.db'}",
            "HOTREFRESH_REDIS_PREFIX": prefix,
            "HOTREFRESH_PROBE_SIZE": "0",
            "HOTREFRESH_ENV": "test",
        }
    )
    settings = Settings()
    images, labels = load_fashion_mnist("train")
    ckpt = work / "checkpoints"
    ckpt.mkdir()
    make_tiny_checkpoint(ckpt / "old.pt", "old", seed=0)
    make_tiny_checkpoint(ckpt / "new.pt", "new", seed=1, arch="conv4", compatible_with="old", trained_with="ract")
    g = build_gallery(settings, images[:n], labels[:n], ckpt / "old.pt", ckpt / "new.pt")
    r = redis_lib.Redis.from_url(os.environ.get("HOTREFRESH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    try:
        up = control.start(settings, r, model=g.new, strategy="margin", batch_size=batch)
        with session_scope(settings.sqlalchemy_url) as s:
            model = EncoderCache("cpu").get(s, g.new)
        if not run_scoring(settings, r, up.id, model, image_store_for(settings)):
            raise SystemExit("scoring did not start the upgrade")
    finally:
        keys = list(r.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            r.delete(*keys)
    db = work / "gallery.db"
    if database_url is None:
        with sqlite3.connect(db) as c:
            c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db


def as_before(after: Path, before: Path) -> None:
    """The same database as schema 0001 left it: old indexes, tasks in item-id order."""
    from alembic import command

    from service.db.migrate import alembic_config

    shutil.copy(after, before)
    command.downgrade(alembic_config(f"sqlite:///{before}"), "0001")
    with sqlite3.connect(before) as c:
        c.execute("CREATE TEMP TABLE t AS SELECT * FROM backfill_tasks ORDER BY upgrade_id, item_id")
        c.execute("DELETE FROM backfill_tasks")
        c.execute("INSERT INTO backfill_tasks SELECT * FROM t ORDER BY upgrade_id, item_id")
        c.execute("DROP TABLE t")
    with sqlite3.connect(before) as c:
        c.execute("VACUUM")  # the rewritten table packed as tightly as the freshly written one
        c.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def queue_order(url: str) -> tuple[int, str, list[int]]:
    """The newest upgrade's id, new model, and its tasks' item ids in the queue's order."""
    from sqlalchemy import select

    from service.db.schema import BackfillTask, Upgrade
    from service.db.session import read_scope

    with read_scope(url) as s:
        up = s.scalar(select(Upgrade).order_by(Upgrade.id.desc()).limit(1))
        order = list(
            s.scalars(
                select(BackfillTask.item_id)
                .where(BackfillTask.upgrade_id == up.id)
                .order_by(BackfillTask.priority.desc(), BackfillTask.item_id)
            )
        )
        return up.id, up.to_model, order


def land_all(db: Path, batch: int, seed: int) -> np.ndarray:
    """Land every task of the upgrade in ``db``, ``batch`` ids at a time in the queue's order;
    CPU seconds per item of each batch's transaction (statements and commit)."""

    from service.db.session import get_engine, session_scope

    url = f"sqlite:///{db}"
    uid, to_model, order = queue_order(url)
    rng = np.random.default_rng(seed)
    per_item = []
    for start in range(0, len(order), batch):
        ids = order[start : start + batch]
        vectors = rng.standard_normal((len(ids), 128), dtype=np.float32)
        t0 = time.process_time()
        with session_scope(url) as s:
            outcome = upgrades.record_encoded(s, uid, to_model, ids, vectors)
        per_item.append((time.process_time() - t0) / len(ids))
        if outcome.newly_done != len(ids):
            raise SystemExit(f"a batch landed {outcome.newly_done} of {len(ids)} items")
    get_engine(url).dispose()
    get_engine(url, True).dispose()
    return np.array(per_item)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60000, help="gallery size (default: the whole training split)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "backfill_write.json")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="backfill-write-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        layouts = {"after": scored_gallery(work, args.n, args.batch)}
        layouts["before"] = work / "before.db"
        as_before(layouts["after"], layouts["before"])
        build_s = time.perf_counter() - t0
        rounds: dict[str, list[np.ndarray]] = {"before": [], "after": []}
        for k in range(args.repeat):
            for name in ("before", "after"):  # alternated, so both see the same machine
                run = work / f"run-{name}-{k}.db"
                shutil.copy(layouts[name], run)
                rounds[name].append(land_all(run, args.batch, seed=k))
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{run}{suffix}").unlink(missing_ok=True)
    us = {name: [1e6 * float(r.mean()) for r in runs] for name, runs in rounds.items()}
    quarter = {
        name: (
            [1e6 * float(np.mean([r[: len(r) // 4].mean() for r in runs]))],
            [1e6 * float(np.mean([r[-(len(r) // 4) :].mean() for r in runs]))],
        )
        for name, runs in rounds.items()
    }
    rows = [
        [
            name,
            statistics.median(us[name]),
            " ".join(f"{v:.0f}" for v in us[name]),
            quarter[name][0][0],
            quarter[name][1][0],
        ]
        for name in ("before", "after")
    ]
    ratio = statistics.median(us["before"]) / statistics.median(us["after"])
    print(table(HEADER, rows))
    print(f"before / after: {ratio:.2f}x less CPU per item")
    write_json(
        args.out,
        {
            "benchmark": "backfill_write",
            "definition": __doc__.split("\n\n")[0],
            "config": {"n": args.n, "batch": args.batch, "repeat": args.repeat, "database": "sqlite"},
            "machine": machine(),
            "build_seconds": build_s,
            "us_cpu_per_item": us,
            "median_us_cpu_per_item": {name: statistics.median(v) for name, v in us.items()},
            "first_quarter_us": {name: q[0][0] for name, q in quarter.items()},
            "last_quarter_us": {name: q[1][0] for name, q in quarter.items()},
            "before_over_after": ratio,
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
