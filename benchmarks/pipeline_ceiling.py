"""The backfill pipeline's ceiling: the real drain (``workers.drain``: lease, image-store read,
decode, SQL transaction, index-log append, ack, in its loader / encoder / writer threads) run
in this process with an encoder that costs nothing (the batch's vectors are ready-made), so
what is left is the per-item CPU a worker spends outside the encoder, which bounds how fast one
worker process can feed a GPU.

Each stage is timed with the CPU clock of the thread that runs it (``time.thread_time``, so
stages in different threads are not blurred by each other); the rest of the process's CPU is
"other" (the drain loop, thread hand-offs, progress and heartbeats). Redis's own CPU (its INFO
counters) is reported beside it; the SQL server's (PostgreSQL) is not. Cases: Fashion-MNIST
28 x 28 grey PNGs for a 28 x 28 grey model, and colour 224 x 224 JPEGs (``models.data.colourize``
at 256, quality 90) for a 224 x 224 RGB model; SQLite (embedded) or a fresh PostgreSQL database.

    nice .venv/bin/python benchmarks/pipeline_ceiling.py   # -> benchmarks/results/pipeline_ceiling.json
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from index_bench import RESULTS, fresh_postgres, machine, table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STAGES = ("lease", "item lookup (SQL)", "read", "decode", "write (SQL)", "commit (SQL)", "index log", "ack")


class StageClock:
    """CPU seconds per stage, each measured on the thread that ran it."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.thread_time()
            try:
                return fn(*a, **kw)
            finally:
                with self._lock:
                    self.cpu[stage] += time.thread_time() - t0
                    self.calls[stage] += 1

        return timed

    def per_call_overhead_s(self, n: int = 200_000) -> float:
        """CPU seconds one wrapped call adds (two clock reads and the lock), so the instrumentation
        is reported as its own line instead of inflating "other"."""

        def noop() -> None:
            pass

        wrapped = StageClock().wrap("x", noop)
        best = float("inf")
        for _ in range(3):
            t0 = time.thread_time()
            for _ in range(n):
                noop()
            plain = time.thread_time() - t0
            t0 = time.thread_time()
            for _ in range(n):
                wrapped()
            best = min(best, (time.thread_time() - t0 - plain) / n)
        return max(0.0, best)


class NullEncoder:
    """The new model's interface with no compute: unit vectors made once, handed out per batch."""

    def __init__(self, meta: Any, batch: int) -> None:
        from models.runtime import EncodeJob

        self.meta = meta
        rng = np.random.default_rng(0)
        v = rng.standard_normal((batch, meta.embedding_dim)).astype(np.float32)
        self._vectors = v / np.linalg.norm(v, axis=1, keepdims=True)
        self._job = EncodeJob

    def submit_tensor(self, x: np.ndarray) -> Any:
        return self._job.done(self._vectors[: len(x)])

    def embed_tensor(self, x: np.ndarray) -> np.ndarray:
        return self._vectors[: len(x)]

    def warm_up(self) -> None:
        pass


@contextmanager
def instrumented(clock: StageClock) -> Iterator[None]:
    """Every stage's function wrapped with the clock for the duration (restored after)."""
    from sqlalchemy.orm import Session

    from service.imagestore import LocalImageStore
    from service.indexport import LogPublisher
    from service.queue import BackfillQueue
    from service.repositories import items, upgrades
    from service.upgrade import images as upgrade_images

    targets = [
        (BackfillQueue, "lease", "lease"),
        (BackfillQueue, "ack", "ack"),
        (items, "image_keys", "item lookup (SQL)"),
        (LocalImageStore, "get", "read"),
        (upgrade_images, "pixels_of", "decode"),
        (upgrades, "record_encoded", "write (SQL)"),
        (Session, "commit", "commit (SQL)"),
        (LogPublisher, "publish", "index log"),
    ]
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    try:
        for obj, name, stage in targets:
            setattr(obj, name, clock.wrap(stage, getattr(obj, name)))
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


def _jpeg(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a.transpose(1, 2, 0)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def run_case(
    case: str, n: int, batch: int, database: str, pg_admin: str, redis_url: str, work: Path, decode_threads: int = 1
) -> dict:
    import redis as redis_lib

    from models.data import colourize, encode_png, load_fashion_mnist
    from service.db.migrate import upgrade_head
    from service.gallery import Upload, add_batch
    from service.registry import register
    from service.settings import Settings, get_settings
    from service.upgrade import control
    from service.upgrade.scoring import run_scoring
    from tests.utils.checkpoints import make_tiny_checkpoint
    from workers.context import WorkerContext
    from workers.drain import drain

    prefix = f"ceiling-{uuid.uuid4().hex[:8]}"
    data = work / prefix
    with ExitStack() as stack:
        url = (
            f"sqlite:///{data / 'hotrefresh.db'}"
            if database == "sqlite"
            else stack.enter_context(fresh_postgres(pg_admin, prefix.replace("-", "_")))
        )
        os.environ.update(
            {
                "HOTREFRESH_DATA_DIR": str(data),
                "HOTREFRESH_DATABASE_URL": url,
                "HOTREFRESH_REDIS_URL": redis_url,
                "HOTREFRESH_REDIS_PREFIX": prefix,
                "HOTREFRESH_PROBE_SIZE": "0",
                "HOTREFRESH_BATCH_SIZE": str(batch),
                "HOTREFRESH_DEVICE": "cpu",
                "HOTREFRESH_ENV": "test",
                "HOTREFRESH_DRAIN_BUDGET_SECONDS": "30",
                "HOTREFRESH_DECODE_THREADS": str(decode_threads),
            }
        )
        get_settings.cache_clear()
        settings = Settings()
        data.mkdir(parents=True)
        settings.models_path.mkdir(parents=True)
        rgb = case.startswith("JPEG")
        size, channels = (224, 3) if rgb else (28, 1)
        for name, seed, compat in (("old", 0, None), ("new", 1, "old")):
            make_tiny_checkpoint(
                settings.models_path / f"{name}.pt",
                name,
                embedding_dim=128,
                seed=seed,
                compatible_with=compat,
                input_channels=channels,
                input_size=(size, size),
            )
        upgrade_head(url)
        ctx = WorkerContext.from_settings(settings)
        from service.db.session import session_scope

        with session_scope(url) as s:
            for name in ("old", "new"):
                register(s, settings, ctx.encoders, settings.models_path / f"{name}.pt", uploaded=False)
        grey = load_fashion_mnist("train")[0][:n]
        if len(grey) < n:  # per-item figures divide by n: never count items that are not there
            raise SystemExit(f"--n {n}: the training split has only {len(grey)} images")
        t0 = time.perf_counter()
        for start in range(0, n, 512):
            block = grey[start : start + 512]
            blobs = [_jpeg(a) for a in colourize(block, 256, seed=start)] if rgb else [encode_png(a) for a in block]
            add_batch(
                settings,
                ctx.redis,
                ctx.images,
                ctx.encoders,
                [Upload(f"g{start + k}", None, b) for k, b in enumerate(blobs)],
            )
        ingest_s = time.perf_counter() - t0
        up = control.start(settings, ctx.redis, model="new", strategy="random", batch_size=batch, plan="paper")
        with session_scope(url) as s:
            new_model = ctx.encoders.get(s, "new")
        assert run_scoring(settings, ctx.redis, up.id, new_model, ctx.images)
        ctx.encoders.put("new", NullEncoder(new_model.meta, batch))  # type: ignore[arg-type]
        r = redis_lib.Redis.from_url(redis_url)
        redis_cpu0 = _redis_cpu(r)
        clock = StageClock()
        with instrumented(clock):
            wall0, cpu0 = time.perf_counter(), time.process_time()
            while drain(ctx, up.id, budget_s=30.0) != "stop":
                pass
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        redis_cpu = _redis_cpu(r) - redis_cpu0
        keys = list(r.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            r.delete(*keys)
    us = {k: 1e6 * clock.cpu[k] / n for k in STAGES}
    us["instrumentation (these clocks)"] = 1e6 * clock.per_call_overhead_s() * sum(clock.calls.values()) / n
    us["other (drain loop, hand-offs, progress)"] = 1e6 * cpu / n - sum(us.values())
    return {
        "case": case,
        "database": database,
        "decode_threads": decode_threads,
        "items": n,
        "batch": batch,
        "ingest_items_per_s": n / ingest_s,
        "wall_s": wall,
        "process_cpu_s": cpu,
        "items_per_s": n / wall,
        "items_per_cpu_s": n / cpu,
        "cpu_us_per_item": 1e6 * cpu / n,
        "stage_cpu_us_per_item": us,
        "redis_server_cpu_us_per_item": 1e6 * redis_cpu / n,
        "calls": dict(clock.calls),
    }


def _redis_cpu(r: Any) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="items of the PNG case (the JPEG case takes a fifth)")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--database", default="sqlite,postgresql")
    ap.add_argument("--cases", default="PNG 28x28 grey,JPEG 256x256 -> 3x224")
    ap.add_argument("--decode-threads", default="1", help="HOTREFRESH_DECODE_THREADS values to run each case at")
    ap.add_argument("--redis", default=os.environ.get("HOTREFRESH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument(
        "--pg-admin-url",
        default=os.environ.get("HOTREFRESH_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "pipeline_ceiling.json")
    args = ap.parse_args()
    runs, rows = [], []
    head = [
        "case",
        "db",
        "decode threads",
        "items",
        "CPU us/item",
        "items/s per core",
        "items/s (wall)",
        "stages (us/item)",
        "redis us/item",
    ]
    with tempfile.TemporaryDirectory(prefix="ceiling-") as tmp:
        for case in args.cases.split(","):
            for database in args.database.split(","):
                for threads in (int(t) for t in args.decode_threads.split(",")):
                    n = args.n if case.startswith("PNG") else max(args.batch, args.n // 5)
                    res = run_case(case, n, args.batch, database, args.pg_admin_url, args.redis, Path(tmp), threads)
                    runs.append(res)
                    st = res["stage_cpu_us_per_item"]
                    rows.append(
                        [
                            case,
                            database,
                            threads,
                            n,
                            res["cpu_us_per_item"],
                            res["items_per_cpu_s"],
                            res["items_per_s"],
                            " ".join(f"{k.split(' ')[0]} {v:.0f}" for k, v in st.items()),
                            res["redis_server_cpu_us_per_item"],
                        ]
                    )
                    print(table(head, rows[-1:]), flush=True)
    print(table(head, rows))
    write_json(
        args.out,
        {
            "benchmark": "backfill pipeline ceiling: the real drain with an encoder that costs nothing",
            "machine": machine(),
            "runs": runs,
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
