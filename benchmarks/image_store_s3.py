"""Which S3 client the image store uses, measured: boto3 (botocore, pure Python over urllib3)
against obstore (0.12, the Python binding of Rust's ``object_store``), on a real SeaweedFS
(``weed server -s3``, the tests' own ``OwnSeaweed``) on this machine.

Cases, each client on the same objects, rounds alternated between the clients:

* GET one after another: 28 x 28 grey PNGs (~500 bytes, Fashion-MNIST-like) and ~50 KB colour
  JPEGs: milliseconds per object.
* GET a batch of 64 at once (what a worker's ``get_many`` does): boto3 with a thread pool of 32
  over one shared client; obstore with ``get_async`` under ``asyncio.gather`` (a semaphore of 32),
  and with its sync ``get`` from a thread pool of 32: milliseconds per batch.
* PUT one after another (fresh objects): objects per second.
* Import and first-client cost, and resident memory, each in a fresh interpreter: import time,
  RSS after import, RSS after a client ran one concurrent batch of 64 JPEGs.

A loopback server measures the clients' own overhead, which is what differs between them; a
remote store adds the same network round trip to both.

    PYTHONPATH=$PWD nice .venv/bin/python benchmarks/image_store_s3.py   # -> results/image_store_s3.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from index_bench import RESULTS, table, write_json
from PIL import Image

from tests.utils.servers import OwnSeaweed

BATCH = 64
CONCURRENCY = 32


def _png(rng: np.random.Generator) -> bytes:
    # A blob on a flat background with a little texture: compresses like a Fashion-MNIST item.
    yy, xx = np.mgrid[:28, :28]
    cy, cx, r = rng.integers(9, 19), rng.integers(9, 19), rng.integers(6, 11)
    a = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 120 + rng.integers(0, 60, (28, 28)), 0).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a, "L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _jpeg(rng: np.random.Generator) -> bytes:
    base = rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((400, 400), Image.Resampling.BICUBIC)
    noisy = np.clip(np.asarray(img, np.int16) + rng.integers(-12, 12, (400, 400, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def boto3_client(server: OwnSeaweed):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        config=Config(max_pool_connections=CONCURRENCY, retries={"max_attempts": 2, "mode": "standard"}),
    )


def obstore_store(server: OwnSeaweed):
    from obstore.store import S3Store

    return S3Store(server.bucket, endpoint=server.endpoint, region=server.region, client_options={"allow_http": True})


class Boto3:
    name = "boto3"

    def __init__(self, server: OwnSeaweed) -> None:
        self.bucket, self.client = server.bucket, boto3_client(server)
        self.pool = ThreadPoolExecutor(CONCURRENCY)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get_many(self, keys: list[str]) -> list[bytes]:
        return list(self.pool.map(self.get, keys))


class ObstoreThreads:
    name = "obstore (threads)"

    def __init__(self, server: OwnSeaweed) -> None:
        self.store = obstore_store(server)
        self.pool = ThreadPoolExecutor(CONCURRENCY)

    def get(self, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.store, key).bytes())

    def put(self, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self.store, key, data)

    def get_many(self, keys: list[str]) -> list[bytes]:
        return list(self.pool.map(self.get, keys))


class ObstoreAsync(ObstoreThreads):
    name = "obstore (async)"

    def __init__(self, server: OwnSeaweed) -> None:
        super().__init__(server)
        self.loop = asyncio.new_event_loop()

    def get_many(self, keys: list[str]) -> list[bytes]:
        import obstore

        sem = asyncio.Semaphore(CONCURRENCY)

        async def one(key: str) -> bytes:
            async with sem:
                res = await obstore.get_async(self.store, key)
                return bytes(await res.bytes_async())

        async def all_() -> list[bytes]:
            return list(await asyncio.gather(*(one(k) for k in keys)))

        return self.loop.run_until_complete(all_())


_FOOTPRINT = """
import json, os, sys, time
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
r0 = rss(); t0 = time.perf_counter()
which, endpoint, bucket, region, keys = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
if which == "boto3":
    import boto3
    from botocore.config import Config
    from concurrent.futures import ThreadPoolExecutor
    t1 = time.perf_counter(); r1 = rss()
    c = boto3.client("s3", endpoint_url=endpoint, region_name=region, config=Config(max_pool_connections=32))
    t2 = time.perf_counter()
    with ThreadPoolExecutor(32) as pool:
        got = list(pool.map(lambda k: c.get_object(Bucket=bucket, Key=k)["Body"].read(), keys))
else:
    import asyncio, obstore
    from obstore.store import S3Store
    t1 = time.perf_counter(); r1 = rss()
    s = S3Store(bucket, endpoint=endpoint, region=region, client_options={"allow_http": True})
    t2 = time.perf_counter()
    async def main():
        async def one(k):
            return bytes(await (await obstore.get_async(s, k)).bytes_async())
        return await asyncio.gather(*(one(k) for k in keys))
    got = asyncio.run(main())
assert len(got) == len(keys) and all(got)
print(json.dumps({"import_s": t1 - t0, "client_s": t2 - t1, "rss_start_mb": r0, "rss_after_import_mb": r1,
                  "rss_after_batch_mb": rss()}))
"""


def footprint(which: str, server: OwnSeaweed, keys: list[str]) -> dict[str, float]:
    env = dict(os.environ, AWS_ACCESS_KEY_ID=server.access_key, AWS_SECRET_ACCESS_KEY=server.secret_key)
    args = [sys.executable, "-c", _FOOTPRINT, which, server.endpoint, server.bucket, server.region, *keys]
    runs = [
        json.loads(subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout) for _ in range(3)
    ]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=200, help="objects of each kind")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "image_store_s3.json")
    args = ap.parse_args()

    import boto3
    import botocore
    import obstore

    server = OwnSeaweed("bench")
    server.start()
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = server.access_key, server.secret_key
    try:
        rng = np.random.default_rng(0)
        data = {"png": [_png(rng) for _ in range(args.objects)], "jpeg": [_jpeg(rng) for _ in range(args.objects)]}
        keys = {kind: [f"{kind}/{i:05d}" for i in range(args.objects)] for kind in data}
        seed = Boto3(server)
        for kind in data:
            list(seed.pool.map(seed.put, keys[kind], data[kind]))
        clients = [Boto3(server), ObstoreAsync(server), ObstoreThreads(server)]
        for c in clients:  # warm: connections open, credentials resolved
            c.get_many(keys["png"][:BATCH])
            assert c.get(keys["jpeg"][0]) == data["jpeg"][0]

        seq: dict[tuple[str, str], list[float]] = {}
        batch: dict[tuple[str, str], list[float]] = {}
        put: dict[str, list[float]] = {}
        for r in range(args.rounds):
            for c in clients if r % 2 == 0 else clients[::-1]:
                for kind in data:
                    t0 = time.perf_counter()
                    for k in keys[kind]:
                        c.get(k)
                    seq.setdefault((c.name, kind), []).append((time.perf_counter() - t0) / args.objects)
                    for start in range(0, args.objects - BATCH + 1, BATCH):
                        t0 = time.perf_counter()
                        got = c.get_many(keys[kind][start : start + BATCH])
                        batch.setdefault((c.name, kind), []).append(time.perf_counter() - t0)
                        assert got == data[kind][start : start + BATCH]
                if c.name != "obstore (async)":  # the same sync put as "obstore (threads)"
                    t0 = time.perf_counter()
                    for i, d in enumerate(data["png"]):
                        c.put(f"put/{c.name.split()[0]}/{r}/{i:05d}", d)
                    put.setdefault(c.name.split()[0], []).append(args.objects / (time.perf_counter() - t0))

        sizes = {kind: statistics.fmean(len(d) for d in data[kind]) for kind in data}
        prints = {which: footprint(which, server, keys["jpeg"][:BATCH]) for which in ("boto3", "obstore")}
    finally:
        server.remove()

    rows = []
    results: dict = {"get_sequential_ms": {}, "get_batch64_ms": {}, "put_per_s": {}, "footprint": prints}
    for name in [c.name for c in clients]:
        for kind in data:
            s_ms = 1000 * statistics.median(seq[(name, kind)])
            b_ms = 1000 * statistics.median(batch[(name, kind)])
            results["get_sequential_ms"][f"{name} {kind}"] = s_ms
            results["get_batch64_ms"][f"{name} {kind}"] = b_ms
            rows.append([name, kind, s_ms, b_ms, BATCH / b_ms * 1000])
    print(table(["client", "kind", "GET seq ms", "batch64 ms", "batch obj/s"], rows))
    for name, rates in put.items():
        results["put_per_s"][name] = statistics.median(rates)
    print(table(["client", "PUT/s (png, sequential)"], [[n, v] for n, v in results["put_per_s"].items()]))
    print(table(["client", *prints["boto3"]], [[n, *p.values()] for n, p in prints.items()]))
    write_json(
        args.out,
        {
            "benchmark": "image_store_s3",
            "server": "SeaweedFS weed server -s3 on 127.0.0.1 (tests.utils.servers.OwnSeaweed)",
            "versions": {"boto3": boto3.__version__, "botocore": botocore.__version__, "obstore": obstore.__version__},
            "cpus": os.cpu_count(),
            "objects_per_kind": args.objects,
            "rounds": args.rounds,
            "batch": BATCH,
            "concurrency": CONCURRENCY,
            "mean_bytes": sizes,
            **results,
        },
    )


if __name__ == "__main__":
    main()
