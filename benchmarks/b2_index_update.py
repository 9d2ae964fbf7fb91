"""B2: the cost of moving a batch of items to the new model's segment must not grow with N.

Two mixed indexes (flat backend) of N=100k and N=1M vectors (D=256) sit side by side; batches
of 256 random items still on the old model are moved to the new segment, alternating between the
two indexes so both see the same machine noise. The headline is the ratio of median move times,
1M / 100k (target <= 1.5). For the record, the naive way (FAISS ``IndexIDMap2(IndexFlatIP)``:
``remove_ids`` + ``add_with_ids``, O(N) per call) is timed the same way with fewer repetitions.

    nice .venv/bin/python benchmarks/b2_index_update.py   # -> benchmarks/results/b2_index_update.json
"""

from __future__ import annotations

import argparse
import gc
import statistics
from pathlib import Path

import faiss
import numpy as np
from index_bench import RESULTS, machine, summary, table, timed, unit_vectors, write_json

from service.index import MixedIndex
from service.index.flat import FlatBackend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[100_000, 1_000_000], metavar=("SMALL", "LARGE"))
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--reps", type=int, default=60, help="timed batches per index")
    ap.add_argument("--naive-reps", type=int, default=5, help="timed batches of the naive remove_ids+add")
    ap.add_argument("--out", type=Path, default=RESULTS / "b2_index_update.json")
    args = ap.parse_args()
    d, b = args.dim, args.batch
    warm = 5
    per_index = (args.reps + warm) * b

    base = unit_vectors(max(args.sizes), d, seed=0)
    fresh = unit_vectors(per_index, d, seed=1)  # the "re-encoded" vectors
    rng = np.random.default_rng(2)
    mixed, naive, batches = {}, {}, {}
    for n in args.sizes:
        idx = MixedIndex(FlatBackend)
        idx.add("old", np.arange(n, dtype=np.int64), base[:n])
        mixed[n] = idx
        flat = faiss.IndexIDMap2(faiss.IndexFlatIP(d))
        flat.add_with_ids(base[:n], np.arange(n, dtype=np.int64))
        naive[n] = flat
        batches[n] = rng.permutation(n)[:per_index].astype(np.int64).reshape(-1, b)
    del base
    gc.collect()

    times: dict[int, list[float]] = {n: [] for n in args.sizes}
    for r in range(args.reps + warm):
        for n in args.sizes if r % 2 == 0 else reversed(args.sizes):
            ids = batches[n][r]
            t = timed(lambda ids=ids, n=n, r=r: mixed[n].move(ids, "new", fresh[r * b : (r + 1) * b]))
            if r >= warm:
                times[n].append(t)
    naive_times: dict[int, list[float]] = {n: [] for n in args.sizes}
    for r in range(args.naive_reps):
        for n in args.sizes:
            ids = batches[n][-(r + 1)]  # not moved above, so still present
            vecs = fresh[r * b : (r + 1) * b]

            def remove_add(ids: np.ndarray = ids, vecs: np.ndarray = vecs, n: int = n) -> None:
                naive[n].remove_ids(ids)
                naive[n].add_with_ids(vecs, ids)

            naive_times[n].append(timed(remove_add))

    small, large = args.sizes
    res = {
        "benchmark": "B2 index update: move a batch to the new segment",
        "dim": d,
        "batch": b,
        "backend": "flat",
        "mixed": {str(n): summary(times[n]) for n in args.sizes},
        "naive_faiss_remove_add": {str(n): summary(naive_times[n]) for n in args.sizes},
        "ratio_large_over_small": statistics.median(times[large]) / statistics.median(times[small]),
        "naive_ratio_large_over_small": statistics.median(naive_times[large]) / statistics.median(naive_times[small]),
        "target_ratio_max": 1.5,
        "machine": machine(),
    }
    res["pass"] = res["ratio_large_over_small"] <= 1.5
    rows = [[f"mixed (tombstone+append) N={n:,}", summary(times[n])["median_s"] * 1e3] for n in args.sizes] + [
        [f"naive remove_ids+add N={n:,}", summary(naive_times[n])["median_s"] * 1e3] for n in args.sizes
    ]
    print(table(["what", f"median ms / batch of {b}"], rows))
    print(
        f"ratio N={large:,} / N={small:,}: mixed {res['ratio_large_over_small']:.3f} (target <= 1.5), "
        f"naive {res['naive_ratio_large_over_small']:.1f}"
    )
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
