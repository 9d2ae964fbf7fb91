"""GPU backend vs CPU backend of the mixed index at 1M x 512: search q/s and move-batch time.

Self-contained: no arguments needed, finishes in well under two minutes on one H100, prints one
JSON object to stdout (and writes it to ``--out``). Without CUDA it says so and still measures
the CPU backend, so it can be smoke-tested anywhere (use a small ``--n`` there).

Both indexes hold the same N vectors, half moved to the new model's segment (the state B3
measures); each figure is taken on the same machine in the same run:
  - search q/s for single queries and for batches of queries (k=10), paper's plan over both segments;
  - the median time to move a batch of 256 items to the new segment (tombstone + append);
  - the time to load N vectors and to backfill half of them in large batches.

    python benchmarks/gpu_index.py --out benchmarks/results/gpu_index.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from index_bench import machine, summary, unit_vectors

from service.index import MixedIndex, QueryPlan, cuda_available
from service.index.flat import FlatBackend


def _vectors(n: int, d: int, seed: int, gpu: bool) -> np.ndarray:
    """Unit vectors; drawn on the GPU when there is one (numpy needs ~10 s for 1M x 512)."""
    if not gpu:
        return unit_vectors(n, d, seed)
    import torch

    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn((n, d), generator=g, device="cuda")
    x /= x.norm(dim=1, keepdim=True)
    return x.cpu().numpy()


def _sync(idx: MixedIndex) -> None:
    for seg in idx._segments.values():
        sync = getattr(seg, "synchronize", None)
        if sync:
            sync()


def measure(name: str, idx: MixedIndex, base: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    n, b = len(base), args.batch
    out: dict[str, Any] = {"backend": name}
    t0 = time.perf_counter()
    idx.add("old", np.arange(n, dtype=np.int64), base)
    _sync(idx)
    out["load_s"] = time.perf_counter() - t0

    rng = np.random.default_rng(1)
    order = rng.permutation(n).astype(np.int64)
    half = order[: n // 2]
    t0 = time.perf_counter()
    for s in range(0, len(half), 65_536):
        part = half[s : s + 65_536]
        idx.move(part, "new", base[part])
    _sync(idx)
    out["backfill_half_s"] = time.perf_counter() - t0
    out["backfill_items_per_s"] = len(half) / out["backfill_half_s"]

    rest = order[n // 2 :]
    fresh = base[rest[: (args.move_reps + 3) * b]]
    times = []
    for r in range(args.move_reps + 3):
        ids = rest[r * b : (r + 1) * b]
        t0 = time.perf_counter()
        idx.move(ids, "new", fresh[r * b : (r + 1) * b])
        _sync(idx)
        if r >= 3:
            times.append(time.perf_counter() - t0)
    out["move_batch"] = summary(times)

    queries = _vectors(max(args.single, args.query_batch), base.shape[1], 7, gpu=False)
    idx.search(QueryPlan.single(queries[:1]), args.k)  # warm-up
    t0 = time.perf_counter()
    for i in range(args.single):
        idx.search(QueryPlan.single(queries[i : i + 1]), args.k)
    out["single_qps"] = args.single / (time.perf_counter() - t0)
    qb = queries[: args.query_batch]
    idx.search(QueryPlan.single(qb), args.k)  # warm-up
    reps = args.batched_reps
    t0 = time.perf_counter()
    for _ in range(reps):
        idx.search(QueryPlan.single(qb), args.k)
    out["batched_qps"] = reps * len(qb) / (time.perf_counter() - t0)
    out["check_scores"] = idx.search_arrays(queries[:8], args.k).scores
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=256, help="items per move batch")
    ap.add_argument("--move-reps", type=int, default=30)
    ap.add_argument("--single", type=int, default=30, help="single-query searches per backend")
    ap.add_argument("--query-batch", type=int, default=256)
    ap.add_argument("--batched-reps", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    gpu = cuda_available()
    res: dict[str, Any] = {
        "benchmark": "mixed index: GPU backend vs CPU flat backend",
        "n": args.n,
        "dim": args.dim,
        "k": args.k,
        "move_batch": args.batch,
        "query_batch": args.query_batch,
        "gpu_available": gpu,
        "machine": machine(),
    }
    base = _vectors(args.n, args.dim, 0, gpu)
    cpu = measure("cpu-flat", MixedIndex(FlatBackend), base, args)
    res["cpu"] = cpu
    if gpu:
        import torch

        res["gpu_name"] = torch.cuda.get_device_name(0)
        res["torch"] = torch.__version__
        g = measure("gpu-torch", MixedIndex("gpu"), base, args)
        res["gpu"] = g
        res["scores_agree"] = bool(np.allclose(g.pop("check_scores"), cpu["check_scores"], atol=1e-3))
        res["gpu_over_cpu"] = {
            "single_qps": g["single_qps"] / cpu["single_qps"],
            "batched_qps": g["batched_qps"] / cpu["batched_qps"],
            "move_batch_speedup": cpu["move_batch"]["median_s"] / g["move_batch"]["median_s"],
            "backfill_items_per_s": g["backfill_items_per_s"] / cpu["backfill_items_per_s"],
        }
    else:
        res["gpu"] = "unavailable: torch sees no CUDA device"
    cpu.pop("check_scores")
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
