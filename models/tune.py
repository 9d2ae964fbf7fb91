"""Hyper-parameter search for the compatibility losses on TRAINING data only.

The first ``validation_size`` training images become queries + gallery; models train on the
rest. The criterion is what a hot refresh lives through: the mean mAP over the whole backfill
curve (random order), plus, as a tie-breaker-free second number for the record, mean NFR@1.
The evaluation split (the test set) is never read here.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from models.experiment import ExperimentConfig, run_seed
from models.uncertainty import RANDOM

log = logging.getLogger("hotrefresh.tune")


def tune(
    base: ExperimentConfig,
    out_dir: str | Path,
    models_dir: str | Path,
    *,
    taus: list[float],
    lams: list[float],
    topks: list[int | None],
    seed: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """Grid search per method; returns {method: best {tau, lam, topk}} and every score."""
    out, mdir = Path(out_dir), Path(models_dir)
    scores: list[dict[str, Any]] = []
    for tau, lam, topk in itertools.product(taus, lams, topks):
        tag = f"tau{tau}_lam{lam}_top{topk}"
        cfg = replace(
            base,
            seeds=[seed],
            orderings=[RANDOM.name],
            tau=tau,
            lam=lam,
            topk=topk,
            overrides={},
            validation_size=base.validation_size or 10000,
        )
        doc = run_seed(cfg, seed, out / tag, mdir / tag, progress)
        for c in doc["curves"]:
            maps = [p["map"] for p in c["points"]]
            nfrs = [p["nfr"] for p in c["points"] if p["nfr"] is not None]
            row = {
                "method": c["method"],
                "tau": tau,
                "lam": lam,
                "topk": topk,
                "mean_map": float(np.mean(maps)),
                "map_at_0": maps[0],
                "map_at_100": maps[-1],
                "mean_nfr": float(np.mean(nfrs)) if nfrs else None,
                "old_to_old": doc["old_to_old"]["map"],
            }
            scores.append(row)
            log.info("tune %s %s: mean mAP %.4f", c["method"], tag, row["mean_map"])
    best = {}
    for m in {r["method"] for r in scores}:
        top = max((r for r in scores if r["method"] == m), key=lambda r: r["mean_map"])
        best[m] = {"tau": top["tau"], "lam": top["lam"], "topk": top["topk"]}
    result = {
        "criterion": "mean mAP over the random-order backfill curve, validation split of the training set",
        "seed": seed,
        "allocation": base.allocation,
        "best": best,
        "scores": scores,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "tuning.json").write_text(json.dumps(result, indent=1) + "\n")
    return result
