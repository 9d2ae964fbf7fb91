"""Issue 26's two promises of the served curve, before and after the chooser keeps the old
system's mAP first (``models.plans.choose``), from two ``hotrefresh experiment`` runs on the same
cached models (``<before>/<dataset>/<allocation>/seed*/curve.json``, the same for ``<after>``):

1. never below the old system: the lowest mAP ``auto`` serves on the held-out queries against
   old-to-old, read strictly and within two paired standard errors (``map_vs_old_se``);
2. never more flips than the finished upgrade + 1 point: the highest NFR@1 against the final,
   strictly and within two paired standard errors (``nfr_vs_final_se``); and the final-NFR
   estimate the bound is built on, against the true final NFR@1 on the held-out queries (its
   error at every step between the ends; a run without ``final_nfr_estimate`` reads it back
   from ``nfr_bound`` minus the one-point slack).

    .venv/bin/python benchmarks/promises_summary.py --before var/promises-before --after var/promises-after
    # -> benchmarks/results/promises/summary.json and summary.md
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from models.experiment import check_plans
from models.plans import AUTO, NFR_SLACK

OUT = Path(__file__).resolve().parent / "results" / "promises"
DATASETS = ("fashion-mnist", "digits")
ALLOCATIONS = ("expansion", "open-data", "open-class")


def _with_estimates(doc: dict[str, Any]) -> dict[str, Any]:
    """A run made before the estimate was kept: read it back from the bound (estimate + slack)."""
    for c in doc["curves"]:
        for p in c["points"]:
            if "final_nfr_estimate" not in p and p.get("nfr_bound") is not None:
                p["final_nfr_estimate"] = p["nfr_bound"] - NFR_SLACK
    return doc


def seed_row(doc: dict[str, Any]) -> dict[str, Any]:
    """One seed's ``auto`` curve (the first new model in the document): both promises and the estimate."""
    checks = check_plans(_with_estimates(doc))
    (curve, res), *_ = checks.items()
    e, f, est = res["e_map_never_below_old"], res["f_nfr_within_final_plus_1pt"], res["final_nfr_estimate"]
    pts = next(c["points"] for c in doc["curves"] if c.get("plan") == AUTO)
    probe_final = pts[-1].get("final_nfr_estimate")  # exact on the probes at 100%
    mid = [p["final_nfr_estimate"] for p in pts[1:-1] if p.get("final_nfr_estimate") is not None]
    return {
        "seed": doc["seed"],
        "curve": curve,
        "old_to_old": e["old_to_old"],
        "lowest_map": e["lowest_map"],
        "map_holds": e["holds"],
        "map_holds_within_noise": e.get("holds_within_noise"),
        "map_se_at_lowest": e.get("se_at_lowest"),
        "highest_nfr": f["highest_nfr"],
        "final_nfr": f["final_nfr"],
        "nfr_holds": f["holds"],
        "nfr_holds_within_noise": f.get("holds_within_noise"),
        "nfr_se_at_highest": f.get("se_at_highest"),
        "estimate_errors": None if est is None else est["errors"],
        "estimate_mean_error": None if est is None else est["mean_error"],
        "estimate_largest_error": None if est is None else est["largest_error"],
        # the sub-gallery's share of the error: each step's estimate against the probes' own final NFR
        "estimate_vs_probe_final": None
        if probe_final is None or not mid
        else float(np.mean([m - probe_final for m in mid])),
        "plans": [p["plan"] for p in pts],
        "reasons": res.get("reasons"),
    }


def cell(root: Path, dataset: str, allocation: str) -> list[dict[str, Any]]:
    folder = root / dataset / allocation
    return [seed_row(json.loads(p.read_text())) for p in sorted(folder.glob("seed*/curve.json"))]


def _pts(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}"


def _holds(rows: list[dict[str, Any]], key: str) -> str:
    vals = [r[key] for r in rows if r[key] is not None]
    return f"{sum(bool(v) for v in vals)}/{len(vals)}" if vals else "–"


def _md_cell(dataset: str, allocation: str, before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
    out = []
    for tag, rows in (("before", before), ("after", after)):
        if not rows:
            out.append(f"| {dataset} | {allocation} | {tag} | – | – | – | – | – | – | – |")
            continue
        gap = min(r["lowest_map"] - r["old_to_old"] for r in rows)
        over = max(r["highest_nfr"] - r["final_nfr"] for r in rows)
        se_map = max((r["map_se_at_lowest"] or 0.0) for r in rows) if after else None
        se_nfr = max((r["nfr_se_at_highest"] or 0.0) for r in rows) if after else None
        out.append(
            f"| {dataset} | {allocation} | {tag} ({len(rows)} seeds) | "
            f"{_pts(float(np.mean([r['old_to_old'] for r in rows])))} | {100 * gap:+.2f} | "
            f"{_holds(rows, 'map_holds')} | {_pts(se_map) if tag == 'after' else '–'} | {100 * over:+.2f} | "
            f"{_holds(rows, 'nfr_holds')} | {_pts(se_nfr) if tag == 'after' else '–'} |"
        )
    return out


def _md_estimates(dataset: str, allocation: str, rows: list[dict[str, Any]]) -> str:
    errs = [e for r in rows if r["estimate_errors"] for e in r["estimate_errors"].values()]
    sub = [r["estimate_vs_probe_final"] for r in rows if r["estimate_vs_probe_final"] is not None]
    if not errs:
        return f"| {dataset} | {allocation} | – | – | – | – |"
    return (
        f"| {dataset} | {allocation} | {100 * float(np.mean(errs)):+.2f} | {100 * float(np.std(errs)):.2f} | "
        f"{100 * max(errs, key=abs):+.2f} | {100 * float(np.mean(sub)):+.2f} |"
    )


def summarise(before_root: Path, after_root: Path) -> tuple[dict[str, Any], str]:
    doc: dict[str, Any] = {}
    lines = [
        "# The served curve's promises (issue 26), before and after",
        "",
        "`auto`, BCT new model, mixed order, `--quick` models (see docs/promises.md). Per cell, the worst seed:",
        "lowest served mAP minus old-to-old (points), highest NFR@1 minus the finished upgrade's (points);",
        "`holds`: seeds where the promise holds strictly (mAP ≥ old-to-old; NFR ≤ final + 1 point); `2 SE`:",
        "twice the largest paired standard error on the held-out queries at the worst point (the noise).",
        "",
        "| data set | allocation | run | old-to-old mAP | lowest mAP − old | holds | 2 SE | highest NFR − final | "
        "holds (≤ +1) | 2 SE |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    reasons: Counter[str] = Counter()
    for ds in DATASETS:
        for alloc in ALLOCATIONS:
            before, after = cell(before_root, ds, alloc), cell(after_root, ds, alloc)
            doc[f"{ds}/{alloc}"] = {"before": before, "after": after}
            for r in after:
                reasons.update(x for x in (r["reasons"] or []) if x)
            se_rows = [dict(r) for r in after]
            for r in se_rows:  # twice the SE in the table
                for key in ("map_se_at_lowest", "nfr_se_at_highest"):
                    r[key] = None if r[key] is None else 2 * r[key]
            lines += _md_cell(ds, alloc, before, se_rows)
    lines += [
        "",
        "Within noise (after): seeds where the promise holds within two paired standard errors, mAP / NFR:",
        "",
    ]
    for key, v in doc.items():
        rows = v["after"]
        lines.append(f"- {key}: {_holds(rows, 'map_holds_within_noise')} / {_holds(rows, 'nfr_holds_within_noise')}")
    lines += [
        "",
        "## The final-NFR estimate against the true final NFR@1 (held-out queries), every step 10–90%",
        "",
        "| data set | allocation | mean error (bias), points | sd | largest | estimate − probes' own final |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for ds in DATASETS:
        for alloc in ALLOCATIONS:
            rows = doc[f"{ds}/{alloc}"]["after"] or doc[f"{ds}/{alloc}"]["before"]
            lines.append(_md_estimates(ds, alloc, rows))
    lines += ["", "Why `auto` served what it served (after; every step of every seed and cell):", ""]
    lines += [f"- `{k}`: {n}" for k, n in reasons.most_common()]
    doc["reasons"] = dict(reasons)
    return doc, "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    doc, md = summarise(args.before, args.after)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "summary.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
