"""B4: the service's own overhead per ``POST /search``: HTTP latency minus the in-process time of
the same work (decode, encode with the query model, search the mixed index, map ids).

One real API process (uvicorn, SQLite, the local Redis) serves a Fashion-MNIST gallery; the
benchmark process loads the same gallery from the same database into its own replica with the
same checkpoint. Each query image is timed once over HTTP (keep-alive client, multipart upload,
JSON answer) and once in-process, alternating, so both see the same machine noise. The headline is
p50 and p99 of HTTP minus in-process, per request.

Then the same measurement during an upgrade, paused with half the gallery on a second model, once
per query plan (``--plans``, default ``paper,dual``): ``paper`` encodes each query once (the new
model) and ``dual`` twice (old and new), so the two phases put the price of the second encode
next to the paper's, in the same run. Each phase's upgrade is cancelled before the next starts.

    nice .venv/bin/python benchmarks/b4_search_http.py   # -> benchmarks/results/b4_search_http.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from index_bench import RESULTS, machine, table, write_json

from models.data import encode_png as png


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, default=5000, help="Fashion-MNIST train images in the gallery")
    ap.add_argument("--queries", type=int, default=400, help="timed queries (Fashion-MNIST test images)")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--arch", default="conv4")
    ap.add_argument("--plans", default="paper,dual", help="plans measured mid-upgrade ('' for none)")
    ap.add_argument("--out", type=Path, default=RESULTS / "b4_search_http.json")
    args = ap.parse_args()
    # The same thread setting as `hotrefresh serve` (which sets it for the API process), so the
    # in-process path does the same work the server does; must precede the first torch import.
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from cli import launcher
    from models.data import load_fashion_mnist
    from service.api.serving import Serving
    from service.db.migrate import upgrade_head
    from service.settings import Settings
    from tests.utils.checkpoints import make_tiny_checkpoint

    token = "bench-token"
    work = Path(tempfile.mkdtemp(prefix="b4-"))
    env = {
        "HOTREFRESH_ENV": "test",
        "HOTREFRESH_ADMIN_TOKEN": token,
        "HOTREFRESH_DATA_DIR": str(work / "data"),
        "HOTREFRESH_REDIS_URL": os.environ.get("HOTREFRESH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "HOTREFRESH_REDIS_PREFIX": f"b4-{uuid.uuid4().hex[:8]}",
    }
    os.environ.update(env)
    settings = Settings()
    upgrade_head(settings.sqlalchemy_url)
    settings.models_path.mkdir(parents=True, exist_ok=True)
    make_tiny_checkpoint(settings.models_path / "m.pt", "bench", arch=args.arch, embedding_dim=64)
    make_tiny_checkpoint(
        settings.models_path / "m2.pt", "bench-2", arch=args.arch, embedding_dim=64, compatible_with="bench", seed=1
    )

    train, _ = load_fashion_mnist("train")
    test, _ = load_fashion_mnist("test")
    queries = [png(test[i]) for i in range(args.queries + 20)]

    import redis as redis_lib

    r = redis_lib.Redis.from_url(settings.effective_redis_url)
    with launcher.System(work / "system", env=env) as system:
        api = system.start_api(name="api")
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=api.url, headers=auth, timeout=300) as c:
            assert c.post("/models", data={"path": "m.pt"}).status_code == 201
            for s in range(0, args.gallery, 256):
                idx = range(s, min(args.gallery, s + 256))
                files = [("image", (f"{i}.png", png(train[i]), "image/png")) for i in idx]
                res = c.post("/gallery", files=files, data={"external_id": [f"g{i}" for i in idx]})
                assert res.status_code == 201, res.text

        def measure(c: httpx.Client, local: Serving) -> tuple[list[float], list[float]]:
            def in_process(data: bytes) -> None:
                local.search(data, args.k)  # what the route calls: one decode, one view

            http_s: list[float] = []
            local_s: list[float] = []
            for n, data in enumerate(queries):
                order = ("http", "local") if n % 2 == 0 else ("local", "http")
                for which in order:
                    t0 = time.perf_counter()
                    if which == "http":
                        res = c.post("/search", files={"image": ("q.png", data, "image/png")}, params={"k": args.k})
                        assert res.status_code == 200
                    else:
                        in_process(data)
                    dt = time.perf_counter() - t0
                    if n >= 20:  # warm-up
                        (http_s if which == "http" else local_s).append(dt)
            return http_s, local_s

        local = Serving(settings, r)
        local.load()
        assert sum(local.status().counts.values()) == args.gallery
        with httpx.Client(base_url=api.url, timeout=60) as c:
            http_s, local_s = measure(c, local)
            # The floor of any request on this stack: a GET with no body and no work; and the
            # same multipart upload refused after parsing (k=0), i.e. HTTP + form parsing only.
            floor_s, parse_s = [], []
            for data in queries:
                t0 = time.perf_counter()
                assert c.get("/healthz").status_code == 200
                floor_s.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                res = c.post("/search", files={"image": ("q.png", data, "image/png")}, params={"k": 0})
                assert res.status_code == 422
                parse_s.append(time.perf_counter() - t0)
        plans = [p.strip() for p in args.plans.split(",") if p.strip()]
        during: dict[str, dict] = {}
        if plans:
            with httpx.Client(base_url=api.url, headers=auth, timeout=300) as c:
                assert c.post("/models", data={"path": "m2.pt"}).status_code == 201
                worker = system.start_worker(name="worker")
                for plan in plans:
                    during[plan] = mid_upgrade(c, settings, r, plan, measure, system, worker)
    r.close()
    r.close()

    overhead = [h - lo for h, lo in zip(http_s, local_s, strict=True)]
    result = {
        "benchmark": "B4 search over HTTP",
        "gallery": args.gallery,
        "queries": len(http_s),
        "k": args.k,
        "model": {"arch": args.arch, "embedding_dim": 64},
        "threads_per_process": int(os.environ["OMP_NUM_THREADS"]),
        "http_ms": {"p50": pct(http_s, 0.5) * 1e3, "p99": pct(http_s, 0.99) * 1e3},
        "in_process_ms": {"p50": pct(local_s, 0.5) * 1e3, "p99": pct(local_s, 0.99) * 1e3},
        # Per request (paired) and as a difference of percentiles; both for the record.
        "overhead_ms": {
            "p50": pct(overhead, 0.5) * 1e3,
            "p99": pct(overhead, 0.99) * 1e3,
            "mean": statistics.fmean(overhead) * 1e3,
            "p50_http_minus_p50_in_process": (pct(http_s, 0.5) - pct(local_s, 0.5)) * 1e3,
            "p99_http_minus_p99_in_process": (pct(http_s, 0.99) - pct(local_s, 0.99)) * 1e3,
        },
        "healthz_round_trip_ms": {"p50": pct(floor_s, 0.5) * 1e3, "p99": pct(floor_s, 0.99) * 1e3},
        "upload_refused_k0_ms": {"p50": pct(parse_s, 0.5) * 1e3, "p99": pct(parse_s, 0.99) * 1e3},
        "overhead_p50_over_http_p50": pct(overhead, 0.5) / pct(http_s, 0.5),
        "during_upgrade": during,
        "machine": machine(),
    }
    if "paper" in during and "dual" in during:
        result["dual_over_paper"] = {
            k: during["dual"][k]["p50"] / during["paper"][k]["p50"] for k in ("http_ms", "in_process_ms")
        }
    print(
        table(
            ["", "p50 ms", "p99 ms"],
            [
                ["HTTP POST /search", result["http_ms"]["p50"], result["http_ms"]["p99"]],
                ["in-process decode+encode+search", result["in_process_ms"]["p50"], result["in_process_ms"]["p99"]],
                ["service overhead (per request)", result["overhead_ms"]["p50"], result["overhead_ms"]["p99"]],
                [
                    "GET /healthz round trip (floor)",
                    result["healthz_round_trip_ms"]["p50"],
                    result["healthz_round_trip_ms"]["p99"],
                ],
                [
                    "same upload refused with k=0 (422)",
                    result["upload_refused_k0_ms"]["p50"],
                    result["upload_refused_k0_ms"]["p99"],
                ],
            ]
            + [
                [f"mid-upgrade, {p} plan: {what}", v[key]["p50"], v[key]["p99"]]
                for p, v in during.items()
                for what, key in (("HTTP", "http_ms"), ("in-process", "in_process_ms"))
            ],
        )
    )
    write_json(args.out, result)
    print(f"wrote {args.out}")


def mid_upgrade(c, settings, r, plan: str, measure, system, worker) -> dict:
    """Start an upgrade serving ``plan``, pause it with about half the gallery moved, measure,
    cancel it (every item back on the first model) and wait until the API serves that again."""
    import signal

    from service.api.serving import Serving
    from service.db.schema import Upgrade
    from service.db.session import read_scope

    res = c.post("/upgrade", json={"model": "bench-2", "plan": plan, "batch_size": 32})
    assert res.status_code == 202, res.text
    uid = res.json()["id"]
    # The worker runs 50 ms at a time (SIGSTOP/SIGCONT) until half the gallery has moved: a
    # backfill of this size takes seconds, too fast to catch half way by polling alone. While
    # it is frozen only read-only SQL snapshots are read (it may hold SQLite's write lock).
    group = worker.popen.pid
    os.killpg(group, signal.SIGSTOP)
    deadline = time.monotonic() + 600
    try:
        while True:
            with read_scope(settings.sqlalchemy_url) as s:
                row = s.get(Upgrade, uid)
                view = {"state": row.state, "done": row.done, "total": row.total} if row else {"state": "missing"}
            if view["state"] == "running" and view["done"] >= view["total"] // 2:
                break
            assert view["state"] in ("scoring", "running"), view
            assert time.monotonic() < deadline, f"upgrade {uid} stuck: {view}"
            os.killpg(group, signal.SIGCONT)
            time.sleep(0.05)
            os.killpg(group, signal.SIGSTOP)
    finally:
        os.killpg(group, signal.SIGCONT)
    assert c.post(f"/upgrade/{uid}/pause").status_code == 200
    last = None
    while True:  # the batches in flight land
        time.sleep(1.0)
        view = c.get(f"/upgrade/{uid}").json()
        if view.get("fraction") == last:
            break
        last = view.get("fraction")
    local = Serving(settings, r)
    local.load()
    http_s, local_s = measure(c, local)
    assert c.post(f"/upgrade/{uid}/cancel").status_code == 200
    while c.get(f"/upgrade/{uid}").json()["state"] != "cancelled":
        time.sleep(0.2)
    time.sleep(2.0)  # the API's follower applies the cancel's log entries
    return {
        "upgrade": uid,
        "fraction": last,
        "serving_plan": view.get("serving_plan") or view.get("plan"),
        "http_ms": {"p50": pct(http_s, 0.5) * 1e3, "p99": pct(http_s, 0.99) * 1e3},
        "in_process_ms": {"p50": pct(local_s, 0.5) * 1e3, "p99": pct(local_s, 0.99) * 1e3},
    }


if __name__ == "__main__":
    main()
