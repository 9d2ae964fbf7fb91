"""B5: scoring the gallery for the backfill order costs about what the bare arithmetic costs.

N old gallery vectors (default 1M x 512) go through a new classifier of C classes (default 1,000)
with :func:`models.uncertainty.score_uncertainty` (chunked: bounded memory) and are then put in
backfill order (:func:`models.uncertainty.backfill_order`, the sort that fills the queue). The
reference is the raw work alone: the same chunked ``matmul + bias + softmax`` and nothing else.
Passes alternate (raw, strategy, raw, strategy, ...) so both see the same machine noise; the
headline per strategy is items/s of ours ÷ items/s of the adjacent raw passes. The peak resident
memory added while scoring is recorded too (input excluded), to show the streaming is bounded.

    nice .venv/bin/python benchmarks/b5_ordering.py   # -> benchmarks/results/b5_ordering.json
"""

from __future__ import annotations

import argparse
import resource
import statistics
from pathlib import Path

import numpy as np
import torch
from index_bench import RESULTS, machine, table, timed, unit_vectors, write_json

from models.uncertainty import STRATEGIES, backfill_order, score_uncertainty


def raw_pass(v: np.ndarray, w: torch.Tensor, b: torch.Tensor, chunk: int) -> None:
    with torch.inference_mode():
        for i in range(0, len(v), chunk):
            torch.softmax(torch.addmm(b, torch.from_numpy(v[i : i + chunk]), w.T), dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--out", type=Path, default=RESULTS / "b5_ordering.json")
    args = ap.parse_args()
    n, d, c = args.n, args.dim, args.classes

    v = unit_vectors(n, d, seed=0)
    w_np = (unit_vectors(c, d, seed=1) * 16.0).astype(np.float32)  # a trained head's logit scale
    b_np = np.zeros(c, np.float32)
    w, b = torch.from_numpy(w_np), torch.from_numpy(b_np)
    rss_before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # raw, s1, raw, s2, raw, ...: each strategy is compared with the raw passes on either side.
    rows, results = [], {}
    raw_times = [timed(lambda: raw_pass(v, w, b, args.chunk))]
    ours_times: dict[str, float] = {}
    for strategy in STRATEGIES:
        ours_times[strategy] = timed(
            lambda s=strategy: backfill_order(score_uncertainty(v, w_np, b_np, s, chunk=args.chunk))
        )
        raw_times.append(timed(lambda: raw_pass(v, w, b, args.chunk)))
    for k, strategy in enumerate(STRATEGIES):
        ours_ips = n / ours_times[strategy]
        raw_ips = n / statistics.fmean(raw_times[k : k + 2])
        results[strategy] = {
            "items_per_s": ours_ips,
            "raw_matmul_softmax_items_per_s": raw_ips,
            "ratio": ours_ips / raw_ips,
            "seconds": ours_times[strategy],
            "raw_seconds_either_side": raw_times[k : k + 2],
        }
        rows.append([strategy, ours_ips, raw_ips, ours_ips / raw_ips])
    peak_add_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before_mb
    print(table(["strategy", "ours items/s", "raw items/s", "ratio"], rows))
    print(
        f"input {v.nbytes / 2**20:.0f} MiB; peak RSS added while scoring: {peak_add_mb:.0f} MiB "
        f"(chunk {args.chunk} x {c} classes)"
    )
    write_json(
        args.out,
        {
            "benchmark": "B5 ordering: score old vectors with the new classifier + sort, vs raw matmul+softmax",
            "n": n,
            "dim": d,
            "classes": c,
            "chunk": args.chunk,
            "torch_threads": torch.get_num_threads(),
            "input_mib": v.nbytes / 2**20,
            "peak_rss_added_mib": peak_add_mb,
            "strategies": results,
            "machine": machine(),
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
