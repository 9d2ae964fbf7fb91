"""B1: backfill pipeline efficiency — end-to-end backfill items/s through the whole pipeline
(Redis queue lease, image store read + decode, encode, one SQL transaction, index-log append,
ack; real Celery worker processes) ÷ raw encoder items/s (the same model, batch size and encode
call on the same images already decoded into the encoder's uint8 input in memory, in the same
number of processes with the same threads).

For each process count P (default 1 and 2), each trial: a fresh gallery of N Fashion-MNIST images
(default: the whole training split) encoded with an old model, the worker processes started;
raw passes (P processes each encoding N/P images, started together, once with one synchronous
call per batch and once pipelined as the backfill calls the encoder) right before and right
after the backfill, so both see the same machine; the baseline is the mean of the two
synchronous passes (the faster way to call the encoder alone). The
backfill is timed from the upgrade's ``running`` (scoring done) to ``completed`` as SQL records
them. The median trial is reported. Live-NFR probes are off
(``probe_size=0``) for the headline; ``--probes`` measures with them on.

    nice .venv/bin/python benchmarks/b1_backfill.py   # -> benchmarks/results/b1_backfill.json
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC
from pathlib import Path

import numpy as np
from index_bench import RESULTS, fresh_postgres, table, write_json

HEADER = ["procs", "threads", "raw items/s", "backfill items/s", "ratio (median)", "every trial"]
WORKER_ENV_KEYS = ("HOTREFRESH_DATABASE_URL", "HOTREFRESH_REDIS_PREFIX", "HOTREFRESH_DATA_DIR")


def _raw_worker(
    path: str, images: np.ndarray, batch: int, threads: int, device: str, start: mp.Event, out: mp.Queue
) -> None:
    import torch
    from PIL import Image

    from models.checkpoint import load_checkpoint
    from models.preprocess import pil_to_chw

    torch.set_num_threads(threads)
    model = load_checkpoint(path, device=device)
    model.batch_size = batch
    # The encoder's own input, prepared before the clock starts: decoding and pixel layout are
    # the pipeline's work, so they count against the backfill, never for the baseline.
    pixels = np.stack([pil_to_chw(Image.fromarray(a), model.meta) for a in images])
    model.warm_up()  # what a worker does when it loads the model
    start.wait()
    # Both ways the encoder can be called, one after the other (the synchronous one is the baseline).
    # Synchronous: one embed_tensor call per batch, returning numpy (the device work is done).
    t0 = time.perf_counter()
    for s in range(0, len(pixels), batch):
        model.embed_tensor(pixels[s : s + batch])
    sync_s = time.perf_counter() - t0
    # Pipelined, as the backfill calls it: the next batch is queued before the previous result
    # is collected, so the encoder never idles between batches.
    t0 = time.perf_counter()
    previous = None
    for s in range(0, len(pixels), batch):
        job = model.submit_tensor(pixels[s : s + batch])
        if previous is not None:
            previous.result()
        previous = job
    if previous is not None:
        previous.result()
    pipelined_s = time.perf_counter() - t0
    out.put((sync_s, pipelined_s, len(pixels)))


def raw_items_per_s(path: Path, images: np.ndarray, batch: int, procs: int, threads: int, device: str) -> dict:
    """P processes encode their share at once, synchronously then pipelined; items/s = all items
    / the slowest process's time, for each way."""
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    shares = np.array_split(images, procs)
    ps = [ctx.Process(target=_raw_worker, args=(str(path), sh, batch, threads, device, start, out)) for sh in shares]
    for p in ps:
        p.start()
    time.sleep(3.0 if device == "cpu" else 8.0)  # let every process load the model and warm up
    start.set()
    results = [out.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    n = sum(r[2] for r in results)
    return {"sync": n / max(r[0] for r in results), "pipelined": n / max(r[1] for r in results)}


def build(settings, images, labels, old_path, new_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.utils.gallery import build_gallery

    return build_gallery(settings, images, labels, old_path, new_path)


def database_url(args: argparse.Namespace, prefix: str, data: Path) -> str:
    if args.database == "sqlite":
        return f"sqlite:///{data / 'hotrefresh.db'}"
    return args.pg_stack.enter_context(fresh_postgres(args.pg_admin_url, prefix.replace("-", "_")))


def backfill_items_per_s(
    args: argparse.Namespace,
    procs: int,
    threads: int,
    images: np.ndarray,
    labels: np.ndarray,
    ckpts: tuple[Path, Path],
    work: Path,
    raw: Callable[[], dict],
) -> dict:
    """One backfill, with ``raw()`` measured right before it starts and right after it ends
    (gallery built, worker processes up and idle): the pair sees the same machine."""
    import redis as redis_lib
    from sqlalchemy import func, select

    from cli.launcher import System
    from service.db.schema import Embedding, Upgrade
    from service.db.session import read_scope, session_scope
    from service.dispatch import send_score
    from service.settings import Settings
    from service.upgrade import control

    prefix = f"b1-{uuid.uuid4().hex[:8]}"
    data = work / prefix
    env = {
        "HOTREFRESH_DATA_DIR": str(data),
        "HOTREFRESH_DATABASE_URL": database_url(args, prefix, data),
        "HOTREFRESH_REDIS_URL": args.redis,
        "HOTREFRESH_REDIS_PREFIX": prefix,
        "HOTREFRESH_PROBE_SIZE": str(args.probe_size),
        "HOTREFRESH_BATCH_SIZE": str(args.batch),
        "HOTREFRESH_TORCH_THREADS": str(threads),
        "HOTREFRESH_DEVICE": args.device,
        "HOTREFRESH_ENV": "test",
    }
    os.environ.update(env)
    from service.settings import get_settings

    get_settings.cache_clear()
    settings = Settings()
    t0 = time.perf_counter()
    g = build(settings, images, labels, *ckpts)
    build_s = time.perf_counter() - t0
    r = redis_lib.Redis.from_url(args.redis)
    with System(work / f"{prefix}-sys", env=env) as system:
        workers = [system.start_worker(name=f"w{i}", concurrency=1) for i in range(procs)]
        raw_before = raw()
        up = control.start(settings, r, model=g.new, strategy="margin", batch_size=args.batch)
        send_score(settings, up.id)
        deadline = time.monotonic() + 1800
        while True:
            with read_scope(settings.sqlalchemy_url) as s:  # polling must not take the write lock
                row = s.get(Upgrade, up.id)
                state, baseline, completed_at, done = row.state, row.baseline, row.completed_at, row.done
            if state == "completed":
                break
            if state not in ("scoring", "running") or time.monotonic() > deadline:
                raise RuntimeError(f"upgrade ended {state}: " + "\n".join(w.log_tail() for w in workers))
            time.sleep(0.2)
        raw_after = raw()

    def ts(d):
        return (d if d.tzinfo else d.replace(tzinfo=UTC)).timestamp()

    with session_scope(settings.sqlalchemy_url) as s:
        first_write, last_write = s.execute(
            select(func.min(Embedding.created_at), func.max(Embedding.created_at)).where(Embedding.model == g.new)
        ).one()
    start, end = float(baseline["running_since"]), ts(completed_at)
    seconds = end - start
    keys = list(r.scan_iter(f"{prefix}:*", count=1000))
    if keys:
        r.delete(*keys)
    # Where the time outside steady batches went: before the first batch landed (task dispatch,
    # the first lease, load and encode) and after the last one (completion checks).
    return {
        "raw_before": raw_before,
        "raw_after": raw_after,
        "items": done,
        "seconds": seconds,
        "items_per_s": done / seconds,
        "gallery_build_s": build_s,
        "scoring_s": baseline.get("scoring_seconds"),
        "first_write_after_s": ts(first_write) - start,
        "completed_after_last_write_s": end - ts(last_write),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60000, help="gallery size (default: the whole training split)")
    ap.add_argument(
        "--split",
        default="train",
        choices=["train", "test"],
        help="Fashion-MNIST split the gallery comes from (train: up to 60,000 items)",
    )
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--arch", default="conv4")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--procs", default="1,2")
    ap.add_argument("--repeat", type=int, default=5, help="trials per process count (fresh gallery each)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process, raw and backfill alike (1: the encoder owns one core, as it "
        "would own its GPU; the loader and writer stages run beside it)",
    )
    ap.add_argument("--probes", dest="probe_size", type=int, default=0, help="probe_size (0 = live NFR off)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where both encoders run")
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder (default: the Debian package's)")
    ap.add_argument("--redis", default=os.environ.get("HOTREFRESH_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument(
        "--database",
        default="sqlite",
        choices=["sqlite", "postgresql"],
        help="the embedded default, or a fresh PostgreSQL database per trial (on this machine, its "
        "server shares the cores with the workers)",
    )
    ap.add_argument(
        "--pg-admin-url",
        default=os.environ.get("HOTREFRESH_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
        help="a database on the server where --database postgresql creates and drops its own",
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "b1_backfill.json")
    args = ap.parse_args()

    from models.data import load_fashion_mnist
    from tests.utils.checkpoints import make_tiny_checkpoint

    images, labels = load_fashion_mnist(args.split, **({"root": args.data} if args.data else {}))
    images, labels = images[: args.n], labels[: args.n]
    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="b1-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        models_dir.mkdir()
        old_p, new_p = models_dir / "old.pt", models_dir / "new.pt"
        make_tiny_checkpoint(old_p, "old", arch="conv2", embedding_dim=args.dim, seed=0)
        make_tiny_checkpoint(new_p, "new", arch=args.arch, embedding_dim=args.dim, seed=1, compatible_with="old")
        rows, runs = [], []
        for procs in [int(p) for p in args.procs.split(",")]:
            threads = args.threads
            trials = []
            for _ in range(args.repeat):
                with ExitStack() as args.pg_stack:  # a PostgreSQL trial's database lives as long as the trial
                    e2e = backfill_items_per_s(
                        args,
                        procs,
                        threads,
                        images,
                        labels,
                        (old_p, new_p),
                        work,
                        lambda: raw_items_per_s(new_p, images, args.batch, procs, threads, args.device),  # noqa: B023
                    )
                before, after = e2e.pop("raw_before"), e2e.pop("raw_after")
                # The baseline is the synchronous passes: alone, the encoder is fastest called that
                # way (the pipelined call measured ~5% slower back to back in one process); the
                # pipelined passes are recorded beside it, with the ratio against them.
                raw = statistics.fmean([before["sync"], after["sync"]])
                pipelined = statistics.fmean([before["pipelined"], after["pipelined"]])
                trials.append(
                    {
                        "raw_items_per_s": raw,
                        "raw_before": before,
                        "raw_after": after,
                        "backfill": e2e,
                        "ratio": e2e["items_per_s"] / raw,
                        "ratio_vs_pipelined_passes": e2e["items_per_s"] / pipelined,
                    }
                )
            # The median trial by ratio: this shared 2-core machine's speed drifts by 10-20% between
            # minutes, so one pair can land on either side of the target by chance.
            mid = sorted(trials, key=lambda t: t["ratio"])[len(trials) // 2]
            runs.append(
                {
                    "processes": procs,
                    "torch_threads_each": threads,
                    **mid,
                    "ratios": [t["ratio"] for t in trials],
                    "ratios_vs_pipelined_passes": [t["ratio_vs_pipelined_passes"] for t in trials],
                    "trials": trials,
                }
            )
            rows.append(
                [
                    procs,
                    threads,
                    mid["raw_items_per_s"],
                    mid["backfill"]["items_per_s"],
                    mid["ratio"],
                    " ".join(f"{t['ratio']:.2f}" for t in trials),
                ]
            )
            print(table(HEADER, rows[-1:]), flush=True)
    import platform

    import torch

    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    payload = {
        "benchmark": "B1 backfill pipeline efficiency",
        "definition": "end-to-end backfill items/s (lease, read+decode, encode, SQL txn, index log, ack; "
        "Celery worker processes) / raw encoder items/s (same model, batch, process count, threads; "
        "mean of the synchronous passes right before and right after the backfill; "
        "pipelined passes recorded too)",
        "config": {
            "n": args.n,
            "batch": args.batch,
            "arch": args.arch,
            "dim": args.dim,
            "threads": args.threads,
            "database": args.database,
            "probe_size": args.probe_size,
            "split": args.split,
            "repeat": args.repeat,
            "device": args.device,
            "target_ratio": 0.85,
        },
        "machine": {
            "cpus": cpus,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "gpu": gpu,
            "torch": torch.__version__,
        },
        "runs": runs,
    }
    write_json(args.out, payload)
    print(table(HEADER, rows))
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
