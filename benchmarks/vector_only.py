"""Upgrades without images (issue 26 item 3): the retrieval quality of a vector-only upgrade next to
a full re-encode and to the old system, on Fashion-MNIST and the digits set.

Per data set and seed: an old model (conv2, cross-entropy, the expansion allocation's 30%) and new
models (conv4: RACT, BCT and independent, tau 0.1 and lambda 0.25) are trained as ``hotrefresh
experiment --quick`` trains them (Fashion-MNIST: 12,000 images, 2 epochs; digits: 20 epochs),
each new one carrying its old->new map fitted at training time on its own training images
(``models.carried_map``). Held-out queries (new model) against a
held-out gallery, full-ranking mAP and top-1, NFR@1 against the old system:

- ``old``: the old system (old query, old gallery), what rollback serves;
- ``full``: a full re-encode (new query, every gallery image encoded by the new model);
- ``vector_only``: every gallery vector mapped by the carried map (no gallery image read);
- ``vector_only_gallery_map``: the same with a map fitted on the gallery's own pairs (every old
  and new vector of the gallery: the best a linear map can do, and what ``transform`` fits at 100%);
- ``third_mapped``: a third of the gallery's images lost (a seeded third), the rest encoded, the
  lost ones mapped with the map fitted on the encoded two thirds (what the service does at the end
  of a backfill);
- ``no_backfill``: the new query against the old gallery as it is (the paper's plan at 0%; only
  meaningful for a compatible model).

    nice .venv/bin/python benchmarks/vector_only.py            # -> benchmarks/results/vector_only.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.carried_map import carried_map
from models.checkpoint import load_checkpoint
from models.data import allocate, eval_split, load_dataset
from models.metrics import evaluate_scores, negative_flip_rate
from models.plans.linear_map import fit_transform
from models.train import TrainConfig, train_and_save
from service.upgrade.mapping import mapped_vectors

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# What is trained and evaluated per data set (cheap: 2 shared cores).
DATASETS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {"train_limit": 12_000, "epochs": 2, "n_queries": 1000, "n_gallery": 4000},
    "digits": {"train_limit": None, "epochs": 20, "n_queries": 150, "n_gallery": 389},
}
METHODS = {"ract": "ract", "bct": "bct", "independent": "none"}
HYPER = {"tau": 0.1, "lam": 0.25}  # the query-plan experiments' (README, "Query plans")


def _train(dataset: str, seed: int, models_dir: Path) -> tuple[Path, dict[str, Path], dict[str, float]]:
    spec = DATASETS[dataset]
    x, y = load_dataset(dataset, "train")
    if spec["train_limit"] and spec["train_limit"] < len(y):
        keep = np.sort(np.random.default_rng(10_000 + seed).permutation(len(y))[: spec["train_limit"]])
        x, y = x[keep], y[keep]
    alloc = allocate("expansion", y, seed)
    common = {"embedding_dim": 64, "batch_size": 256, "lr": 3e-3, "seed": seed, "epochs": spec["epochs"]}
    d = models_dir / dataset / f"seed{seed}"
    timings: dict[str, float] = {}
    old = d / "old.pt"
    if not old.exists():
        t0 = time.perf_counter()
        cfg = TrainConfig(arch="conv2", **common)  # type: ignore[arg-type]
        train_and_save(x[alloc.old_idx], y[alloc.old_idx], cfg, old, f"{dataset}-s{seed}-old", progress=False)
        timings["old"] = time.perf_counter() - t0
    new = {}
    for method, loss in METHODS.items():
        path = d / f"{method}.pt"
        if not path.exists():
            t0 = time.perf_counter()
            cfg = TrainConfig(arch="conv4", loss=loss, **HYPER, **common)  # type: ignore[arg-type]
            train_and_save(
                x[alloc.new_idx],
                y[alloc.new_idx],
                cfg,
                path,
                f"{dataset}-s{seed}-{method}",
                old_path=old,
                old_classes=alloc.old_classes,
                progress=False,
            )
            timings[method] = time.perf_counter() - t0
        new[method] = path
    return old, new, timings


def _measure(q: np.ndarray, g: np.ndarray, ql: np.ndarray, gl: np.ndarray, old_top1: np.ndarray | None) -> dict:
    r = evaluate_scores(torch.from_numpy(q) @ torch.from_numpy(g).T, ql, gl)
    out = {"map": round(float(r.map), 4), "top1": round(float(np.mean(r.top1_correct)), 4)}
    if old_top1 is not None:
        nfr = negative_flip_rate(old_top1, r.top1_correct)
        out["nfr"] = None if nfr is None else round(nfr, 4)
    return out


def run(dataset: str, seed: int, models_dir: Path) -> dict[str, Any]:
    old_path, new_paths, timings = _train(dataset, seed, models_dir)
    spec = DATASETS[dataset]
    xt, yt = load_dataset(dataset, "test")
    qi, gi = eval_split(yt, n_queries=spec["n_queries"], n_gallery=spec["n_gallery"], seed=0)
    ql, gl = yt[qi], yt[gi]
    old = load_checkpoint(old_path, device="cpu")
    g_old, q_old = old.embed_tensor(xt[gi]), old.embed_tensor(xt[qi])
    base = evaluate_scores(torch.from_numpy(q_old) @ torch.from_numpy(g_old).T, ql, gl)
    old_top1 = np.asarray(base.top1_correct, bool)
    doc: dict[str, Any] = {
        "dataset": dataset,
        "seed": seed,
        "n_queries": len(qi),
        "n_gallery": len(gi),
        "old": _measure(q_old, g_old, ql, gl, None),
        "methods": {},
        "train_seconds": timings,
    }
    lost = np.sort(np.random.default_rng(seed).choice(len(gi), len(gi) // 3, replace=False))
    kept = np.setdiff1d(np.arange(len(gi)), lost)
    for method, path in new_paths.items():
        new = load_checkpoint(path, device="cpu")
        carried = carried_map(new.meta.extra)
        assert carried is not None and carried.from_hash == old.meta.content_hash
        g_new, q_new = new.embed_tensor(xt[gi]), new.embed_tensor(xt[qi])
        own = fit_transform(g_old, g_new)
        third = g_new.copy()
        third[lost] = mapped_vectors(fit_transform(g_old[kept], g_new[kept]), g_old[lost])
        doc["methods"][method] = {
            "carried_map_pairs": carried.map.pairs,
            "full": _measure(q_new, g_new, ql, gl, old_top1),
            "vector_only": _measure(q_new, mapped_vectors(carried.map, g_old), ql, gl, old_top1),
            "vector_only_gallery_map": _measure(q_new, mapped_vectors(own, g_old), ql, gl, old_top1),
            "third_mapped": _measure(q_new, third, ql, gl, old_top1),
            "no_backfill": _measure(q_new, g_old, ql, gl, old_top1),
        }
    return doc


def _table(docs: list[dict[str, Any]]) -> str:
    rows = [
        "| data set | seed | new model | old | full re-encode | vector-only | vector-only, gallery map | "
        "a third mapped | no backfill |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in docs:
        for method, m in d["methods"].items():
            cells = [
                m[k]["map"] for k in ("full", "vector_only", "vector_only_gallery_map", "third_mapped", "no_backfill")
            ]
            rows.append(
                f"| {d['dataset']} | {d['seed']} | {method} | {d['old']['map']:.4f} | "
                + " | ".join(f"{c:.4f}" for c in cells)
                + " |"
            )
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--models", type=Path, default=Path("var/bench-vector-only"), help="checkpoints (reused)")
    ap.add_argument("--out", type=Path, default=RESULTS / "vector_only.json")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    docs = [run(ds, int(seed), args.models) for ds in args.datasets.split(",") for seed in args.seeds.split(",")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"what": "mAP of a vector-only upgrade vs a full re-encode and the old system", "runs": docs}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(_table(docs))


if __name__ == "__main__":
    main()
