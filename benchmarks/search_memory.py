"""Memory of an API process under a burst of large valid /search images (issue: "16 concurrent
maximal /search images keep the server under a stated memory ceiling").

Starts a real API (``python -m cli serve`` from the current directory, so the code measured is
the checkout the script is run from: run it from two checkouts to compare them), registers a
model, adds a few items, then sends ``--concurrency`` searches at once with each image below and
samples the API process's resident memory (``/proc/PID/status``) throughout the burst:

- ``probe-25mp-rgba-png``: the hostile probe's image, a 4,999 x 5,000 RGBA PNG (about 100 KB on the
  wire, just under the 25-megapixel header limit);
- ``budget-4mp-rgba-png``: 2,048 x 2,048 RGBA, the largest PNG within /search's own decoded budget
  (``HOTREFRESH_MAX_QUERY_PIXELS``, 4,194,304), the worst case the budget still decodes.

Prints the answers' status codes and the RSS before, at peak and after (MiB), and appends one
record to ``--out``. Usage (from each checkout):
    .venv/bin/python benchmarks/search_memory.py --label after
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, os.getcwd())  # the checkout under test, before any other copy of the packages

RESULTS = Path(__file__).resolve().parent / "results"


def rgba_png(width: int, height: int) -> bytes:
    """A large, highly compressible RGBA PNG (a soft gradient): big to decode, small to send."""
    a = np.zeros((height, width, 4), np.uint8)
    a[..., 0] = (np.arange(width) % 256)[None, :]
    a[..., 3] = 200
    buf = io.BytesIO()
    Image.fromarray(a, "RGBA").save(buf, "PNG", optimize=True)
    return buf.getvalue()


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def burst(url: str, pid: int, data: bytes, n: int) -> dict:
    before = rss_mib(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()

    def one(_: int) -> int:
        with httpx.Client(timeout=300) as c:
            return c.post(f"{url}/search", files={"image": ("q.png", data, "image/png")}).status_code

    t0 = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    time.sleep(1.0)
    done.set()
    sampler.join()
    return {
        "statuses": dict(Counter(str(c) for c in codes)),
        "rss_before_mib": round(before, 1),
        "rss_peak_mib": round(peak[0], 1),
        "rss_after_mib": round(rss_mib(pid), 1),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="name of the checkout measured (e.g. before, after)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", type=Path, default=RESULTS / "search_memory.json")
    args = ap.parse_args()

    from cli import launcher
    from tests.utils.checkpoints import make_tiny_checkpoint
    from tests.utils.images import synthetic_png

    token = "bench-token"
    work = Path(tempfile.mkdtemp(prefix="search-memory-"))
    env = {"HOTREFRESH_ENV": "test", "HOTREFRESH_ADMIN_TOKEN": token, "HOTREFRESH_DATA_DIR": str(work / "data")}
    (work / "data" / "models").mkdir(parents=True)
    make_tiny_checkpoint(work / "data" / "models" / "m.pt", "bench")
    images = {"probe-25mp-rgba-png": rgba_png(4999, 5000), "budget-4mp-rgba-png": rgba_png(2048, 2048)}
    record: dict = {"label": args.label, "concurrency": args.concurrency, "at": time.time(), "images": {}}
    with launcher.System(work / "system", env=env) as system:
        system.start_redis()
        api = system.start_api(name="api")
        assert api.url is not None
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=api.url, headers=auth, timeout=300) as c:
            assert c.post("/models", data={"path": "m.pt"}).status_code == 201
            files = [("image", (f"{i}.png", synthetic_png(i), "image/png")) for i in range(8)]
            assert c.post("/gallery", files=files, data={"external_id": [f"g{i}" for i in range(8)]}).status_code == 201
        pid = api.popen.pid
        for name, data in images.items():
            res = burst(api.url, pid, data, args.concurrency)
            res["bytes"] = len(data)
            record["images"][name] = res
            print(f"{args.label:>8} {name:22} {res}")
        record["rss_hwm_mib"] = round(rss_mib(pid, "VmHWM"), 1)
    doc = json.loads(args.out.read_text()) if args.out.exists() else {"benchmark": __doc__.splitlines()[0], "runs": []}
    doc["runs"].append(record)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
