"""The cost of refitting the ``transform`` plan at a checkpoint, at 100k and 1M old vectors (D=256).

What a refit does in the service (``service.upgrade.chooser.fit``): T by ridge least squares on at
most ``HOTREFRESH_PLAN_FIT_PAIRS`` (old, new) pairs of backfilled items, then each space's
calibration from a 2,000-item sample (``zscore``; ``prob`` fits a logistic curve on that
sample's labelled pairs). T is served on the query side (``<q W^T, g_old>``), so nothing per
gallery item is rebuilt. The benchmark puts next to that the derived segment the brief first
asked for (every old vector through T into a new flat FAISS index, rebuilt at every refit), so
the saving is a measured ratio, not a claim. Each measurement is the median of ``--repeat`` runs.

    nice .venv/bin/python benchmarks/plan_refit.py   # -> benchmarks/results/plan_refit.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from index_bench import RESULTS, machine, summary, table, timed, unit_vectors, write_json

from models.plans import fit_calibration, fit_transform

DEFAULT_FIT_PAIRS = 20_000  # service.settings: plan_fit_pairs


def measure(n: int, d: int, pairs: int, repeat: int) -> dict:
    import faiss

    old = unit_vectors(n, d, seed=1)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 100, n)
    true_w = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32)
    pick = np.sort(rng.choice(n, min(pairs, n), replace=False))
    x = old[pick]
    y = x @ true_w + 0.05 * rng.standard_normal(x.shape).astype(np.float32)
    t = fit_transform(x, y, "lstsq")
    res: dict = {"n_old_vectors": n, "pairs": len(pick)}
    res["fit_lstsq"] = summary([timed(lambda: fit_transform(x, y, "lstsq")) for _ in range(repeat)])
    res["calibration_zscore"] = summary([timed(lambda: fit_calibration("zscore", old)) for _ in range(repeat)])
    res["calibration_prob"] = summary(
        [timed(lambda: fit_calibration("prob", old, labels=labels)) for _ in range(repeat)]
    )
    q = unit_vectors(1, d, seed=3)
    res["query_side_per_query"] = summary([timed(lambda: t.query_side(q)) for _ in range(100)])

    def derived_segment() -> None:
        index = faiss.IndexFlatIP(d)
        for s in range(0, n, 131_072):
            index.add(np.ascontiguousarray(t.apply(old[s : s + 131_072])))

    res["derived_segment_rebuild"] = summary([timed(derived_segment) for _ in range(repeat)])
    served = res["fit_lstsq"]["median_s"] + res["calibration_zscore"]["median_s"]
    res["refit_as_served_s"] = served
    res["derived_segment_over_refit"] = res["derived_segment_rebuild"]["median_s"] / served
    res["derived_segment_bytes"] = n * d * 4
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=DEFAULT_FIT_PAIRS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS / "plan_refit.json")
    args = ap.parse_args()

    rows, out = [], {}
    for n in [int(x) for x in args.sizes.split(",")]:
        res = measure(n, args.dim, args.pairs, args.repeat)
        out[str(n)] = res
        rows.append(
            [
                n,
                res["pairs"],
                res["fit_lstsq"]["median_s"],
                res["calibration_zscore"]["median_s"],
                res["calibration_prob"]["median_s"],
                res["query_side_per_query"]["median_s"] * 1e6,
                res["derived_segment_rebuild"]["median_s"],
            ]
        )
    sizes = list(out)
    payload = {
        "benchmark": "transform refit at a checkpoint",
        "dim": args.dim,
        "fit_pairs": args.pairs,
        "sizes": out,
        "growth_1m_over_100k": {
            k: out[sizes[-1]][k]["median_s"] / out[sizes[0]][k]["median_s"]
            for k in ("fit_lstsq", "calibration_zscore", "calibration_prob", "derived_segment_rebuild")
        }
        if len(sizes) > 1
        else None,
        "machine": machine(),
    }
    print(
        table(["old vectors", "pairs", "fit T s", "zscore s", "prob s", "T on a query µs", "derived segment s"], rows)
    )
    write_json(args.out, payload)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
