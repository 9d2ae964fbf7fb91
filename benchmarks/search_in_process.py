"""The search path in one process, without HTTP: decode + encode + search per query image, on a
gallery of Fashion-MNIST PNGs, outside an upgrade and during one served with ``dual`` (two
encoders per query). B4 measures the same path beside HTTP, where the machine's noise (a no-op
``/healthz`` moves by half between runs here) hides differences of a few percent; this isolates
it. It runs against the checkout it is started from (old and new ``Serving`` interfaces both),
so ``compare_checkouts.py`` can put two commits side by side:

    .venv/bin/python benchmarks/compare_checkouts.py --base /tmp/base --rounds 3 search_in_process.py
"""

from __future__ import annotations

import argparse
import inspect
import io
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # as `hotrefresh serve` sets it; before torch loads
sys.path.insert(0, os.getcwd())  # the checkout under test

import numpy as np
from PIL import Image

RESULTS = Path(__file__).resolve().parent / "results"


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gallery", type=int, default=2000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--repeat", type=int, default=3, help="passes over the queries")
    ap.add_argument("--out", type=Path, default=RESULTS / "search_in_process.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="search-in-process-"))
    os.environ.update(
        {
            "HOTREFRESH_ENV": "test",
            "HOTREFRESH_ADMIN_TOKEN": "bench",
            "HOTREFRESH_DATA_DIR": str(work),
            "HOTREFRESH_REDIS_URL": os.environ.get("HOTREFRESH_REDIS_URL", "redis://127.0.0.1:6379/0"),
            "HOTREFRESH_REDIS_PREFIX": f"sip-{uuid.uuid4().hex[:8]}",
        }
    )
    import redis

    from models.data import load_fashion_mnist
    from service.api.serving import Serving
    from service.db.migrate import upgrade_head
    from service.db.session import session_scope
    from service.gallery import Upload, add_batch
    from service.imagestore import image_store_for
    from service.registry import EncoderCache, register
    from service.settings import Settings
    from service.upgrade import control
    from tests.utils.checkpoints import make_tiny_checkpoint

    s = Settings()
    upgrade_head(s.sqlalchemy_url)
    s.models_path.mkdir(parents=True, exist_ok=True)
    make_tiny_checkpoint(s.models_path / "m.pt", "bench", arch="conv4", embedding_dim=64)
    make_tiny_checkpoint(
        s.models_path / "m2.pt", "bench-2", arch="conv4", embedding_dim=64, compatible_with="bench", seed=1
    )
    r = redis.Redis.from_url(s.effective_redis_url)
    cache = EncoderCache("cpu")
    with session_scope(s.sqlalchemy_url) as session:
        register(session, s, cache, s.models_path / "m.pt", uploaded=False)
    train, _ = load_fashion_mnist("train")
    test, _ = load_fashion_mnist("test")
    store = image_store_for(s)
    for start in range(0, args.gallery, 250):
        ids = range(start, min(args.gallery, start + 250))
        add_batch(s, r, store, cache, [Upload(f"g{i}", None, png(train[i])) for i in ids])
    queries = [png(test[i]) for i in range(args.queries)]

    def timed(local: Serving) -> dict[str, float]:
        one_call = len(inspect.signature(local.encode_query).parameters) == 1
        if hasattr(local, "search") and one_call:

            def run(d: bytes) -> None:
                local.search(d, 10)
        else:  # the interface before one decode: the route validated, then encoded
            from service.images import decode_image  # type: ignore[attr-defined]

            def run(d: bytes) -> None:
                decode_image(d)
                local.search_vector(local.encode_query(d, s.max_image_pixels)[1], 10)

        for d in queries[:30]:
            run(d)
        times = []
        for _ in range(args.repeat):
            for d in queries:
                t0 = time.perf_counter()
                run(d)
                times.append(time.perf_counter() - t0)
        return {"p50_ms": float(np.percentile(times, 50) * 1e3), "mean_ms": float(np.mean(times) * 1e3)}

    local = Serving(s, r)
    local.load()
    result = {"no upgrade": timed(local)}
    with session_scope(s.sqlalchemy_url) as session:
        register(session, s, cache, s.models_path / "m2.pt", uploaded=False)
    control.start(s, r, model="bench-2", strategy="random", plan="dual")
    local = Serving(s, r)
    local.load()
    result["dual"] = timed(local)
    r.close()
    doc = {"benchmark": "search path in one process (decode + encode + search)", "gallery": args.gallery, **result}
    print(json.dumps(doc, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
