"""B3: searching the mixed index half backfilled costs what a plain FAISS flat index costs.

A plain ``faiss.IndexFlatIP`` of N vectors and a ``MixedIndex`` (flat backend) holding the same N
items, half of them moved to the new model's segment (so two dense segments of N/2, the old one
compacted by the moves), answer the same queries, alternating call by call so both see the same
machine noise. Reported: queries/s of each and the ratio mixed / plain (target >= 0.9), for
single queries and for batches of queries, through ``MixedIndex.search`` (the service's call,
returning Hit objects).

    nice .venv/bin/python benchmarks/b3_mixed_search.py   # -> benchmarks/results/b3_mixed_search.json
"""

from __future__ import annotations

import argparse
import gc
from pathlib import Path

import faiss
import numpy as np
from index_bench import RESULTS, machine, table, timed, unit_vectors, write_json

from service.index import MixedIndex, QueryPlan
from service.index.flat import FlatBackend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--single", type=int, default=20, help="single-query calls per method")
    ap.add_argument("--batch", type=int, default=64, help="queries per batched call")
    ap.add_argument("--batches", type=int, default=4, help="batched calls per method")
    ap.add_argument("--threads", type=int, default=0, help="FAISS/OpenMP threads (0: FAISS's default)")
    ap.add_argument("--out", type=Path, default=RESULTS / "b3_mixed_search.json")
    args = ap.parse_args()
    n, d, k = args.n, args.dim, args.k
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    base = unit_vectors(n, d, seed=0)
    plain = faiss.IndexFlatIP(d)
    plain.add(base)
    idx = MixedIndex(FlatBackend)
    idx.add("old", np.arange(n, dtype=np.int64), base)
    moved = np.random.default_rng(1).permutation(n)[: n // 2].astype(np.int64)
    for part in np.array_split(moved, max(1, len(moved) // 4096)):
        # the re-encoded vectors: near the old ones, as a compatible model's would be
        idx.move(part, "new", base[part])
    del base
    gc.collect()
    assert idx.counts() == {"old": n - n // 2, "new": n // 2}

    queries = unit_vectors(max(args.single, args.batch * args.batches), d, seed=2)
    methods = {
        "plain IndexFlatIP": lambda q: plain.search(q, k),
        "mixed search": lambda q: idx.search(QueryPlan.single(q), k),
    }
    # the same answers, before timing anything
    ref_scores, _ = plain.search(queries[:4], k)
    np.testing.assert_allclose(idx.search_arrays(queries[:4], k).scores, ref_scores, atol=1e-4)

    def measure(calls: list[np.ndarray]) -> dict[str, float]:
        spent = dict.fromkeys(methods, 0.0)
        for fn in methods.values():  # warm-up
            fn(calls[0])
        for i, q in enumerate(calls):
            order = list(methods) if i % 2 == 0 else list(reversed(methods))
            for name in order:
                spent[name] += timed(lambda name=name, q=q: methods[name](q))
        nq = sum(len(q) for q in calls)
        return {name: nq / s for name, s in spent.items()}

    single = measure([queries[i : i + 1] for i in range(args.single)])
    batched = measure([queries[i * args.batch : (i + 1) * args.batch] for i in range(args.batches)])
    res = {
        "benchmark": "B3 mixed-index search, half backfilled, vs plain IndexFlatIP",
        "n": n,
        "dim": d,
        "k": k,
        "segments": idx.counts(),
        "single_query_qps": single,
        "batch_size": args.batch,
        "batched_qps": batched,
        "ratio_single": single["mixed search"] / single["plain IndexFlatIP"],
        "ratio_batched": batched["mixed search"] / batched["plain IndexFlatIP"],
        "target_ratio_min": 0.9,
        "machine": machine(),
    }
    res["pass"] = min(res["ratio_single"], res["ratio_batched"]) >= 0.9
    rows = [[name, single[name], batched[name]] for name in methods]
    print(table(["method", "q/s single", f"q/s batches of {args.batch}"], rows))
    print(f"mixed / plain: single {res['ratio_single']:.3f}, batched {res['ratio_batched']:.3f} (target >= 0.9)")
    write_json(args.out, res)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
