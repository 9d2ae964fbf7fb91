"""The query-plan results table of the README, from the experiment folders under
``benchmarks/results/plans/<dataset>/<allocation>/`` (``curve.json``, mean over seeds, and
``plan_checks.json``): per data set, allocation and new model, the paper's method next to each
plan, and checks (e)-(g) of ``auto`` on the mean curve and on each seed.

    .venv/bin/python benchmarks/plan_summary.py   # -> benchmarks/results/plans/summary.md, *-expansion.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from index_bench import RESULTS

from models.experiment import find_curve

ORDER = "mixed"  # the default order of every plan but the paper's
PAPER_ORDER = "margin"


def _row(label: str, pts: list[dict], ref: float) -> str:
    maps = [100 * p["map"] for p in pts]
    nfrs = [100 * (p["nfr"] or 0.0) for p in pts]
    return (
        f"| {label} | {min(maps):.2f} | {np.mean(maps):.2f} | {np.mean(maps) - ref:+.2f} | {nfrs[0]:.2f} | "
        f"{max(nfrs):.2f} | {nfrs[-1]:.2f} |"
    )


def summarise(root: Path) -> str:
    out = []
    for dataset_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "calibration"):
        for alloc_dir in sorted(p for p in dataset_dir.iterdir() if (p / "curve.json").exists()):
            doc = json.loads((alloc_dir / "curve.json").read_text())
            checks = json.loads((alloc_dir / "plan_checks.json").read_text())
            ref_pts = find_curve(doc, "ract", PAPER_ORDER, "paper")
            ref = float(np.mean([100 * p["map"] for p in ref_pts])) if ref_pts else float("nan")
            size = f"{doc['n_queries']} queries x {doc['n_gallery']} gallery"
            out.append(
                f"#### {dataset_dir.name}, {alloc_dir.name} (seeds {doc.get('seeds')}; old-to-old mAP "
                f"{100 * doc['old_to_old']['map']:.2f}; {size})\n"
            )
            out.append(
                "| new model, plan (order) | lowest mAP | mean mAP | vs paper's method | NFR@1 at 0% | "
                "highest NFR@1 | NFR@1 at 100% |"
            )
            out.append("| --- | --- | --- | --- | --- | --- | --- |")
            for method in ("ract", "bct", "ract+bct", "independent"):
                rows = [("paper", PAPER_ORDER)] + [(p, ORDER) for p in ("dual", "transform", "blend", "auto")]
                for plan, order in rows:
                    pts = find_curve(doc, method, order, plan)
                    if pts is None or (method == "independent" and plan == "paper"):
                        continue
                    label = f"{method}, **{plan}** ({order})" if plan == "auto" else f"{method}, {plan} ({order})"
                    out.append(_row(label, pts, ref))
            out.append("")
            out.append(
                "| `auto` (mixed order), checks | (e) mAP never below old | (f) NFR ≤ final + 1 pt | "
                "(g) mean ≥ paper's + 4 pts | seeds where all three hold |"
            )
            out.append("| --- | --- | --- | --- | --- |")
            for method in ("ract", "bct", "ract+bct", "independent"):
                key = f"{method}, {ORDER}"
                if key not in checks["mean"]:
                    continue
                c = checks["mean"][key]
                per_seed = [all(v.values()) for s in checks["per_seed"].values() for k, v in s.items() if k == key]

                def cell(name: str, detail: str, c: dict = c) -> str:
                    return f"{'**holds**' if c[name]['holds'] else 'does not hold'} ({detail})"

                e = cell("e_map_never_below_old", f"lowest {100 * c['e_map_never_below_old']['lowest_map']:.2f}")
                f = c["f_nfr_within_final_plus_1pt"]
                f_detail = f"{100 * f['highest_nfr']:.2f} vs {100 * f['final_nfr']:.2f}"
                f_cell = cell("f_nfr_within_final_plus_1pt", f_detail)
                g = c["g_mean_map_4pt_above_paper"]
                gain = 100 * (g["mean_map"] - (g["paper_ract_margin_mean_map"] or 0.0))
                g_cell = cell("g_mean_map_4pt_above_paper", f"{gain:+.2f}")
                out.append(f"| {method} | {e} | {f_cell} | {g_cell} | {sum(per_seed)} of {len(per_seed)} |")
            out.append("")
    return "\n".join(out)


def variants(root: Path, sub: str, plans: tuple[str, ...]) -> str:
    """Mean mAP and highest NFR@1 per variant (``<sub>/<dataset>-<variant>/expansion``): the
    calibration and transform comparisons."""
    folders = sorted(p for p in (root / sub).glob("*-*") if (p / "expansion" / "curve.json").exists())
    if not folders:
        return ""
    head = " | ".join(f"{m}, {p}: mean mAP / highest NFR@1" for m in ("bct", "ract") for p in plans)
    out = [f"| data set, {sub} | {head} |", "| --- " * (1 + 2 * len(plans)) + "|"]
    for folder in folders:
        doc = json.loads((folder / "expansion" / "curve.json").read_text())
        cells = []
        for method in ("bct", "ract"):
            for plan in plans:
                pts = find_curve(doc, method, ORDER, plan)
                cells.append(
                    "–"
                    if pts is None
                    else f"{100 * np.mean([p['map'] for p in pts]):.2f} / {100 * max(p['nfr'] or 0.0 for p in pts):.2f}"
                )
        dataset, variant = folder.name.rsplit("-", 1)
        out.append(f"| {dataset}, {variant} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


COLOURS = {
    "paper": "tab:blue",
    "dual": "tab:green",
    "transform": "tab:purple",
    "blend": "tab:orange",
    "auto": "tab:red",
}


def plot(doc: dict, path: Path, method: str = "bct") -> None:
    """The README's figure: the paper's method and each plan with one new model, mAP and NFR@1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    rows = [("ract", PAPER_ORDER, "paper", "the paper's method (RACT, paper, margin)", "black", "--")]
    rows += [
        (method, PAPER_ORDER if p == "paper" else ORDER, p, f"{method}, {p}", COLOURS[p], "-")
        for p in ("paper", "dual", "transform", "blend", "auto")
    ]
    for m, order, plan, label, colour, style in rows:
        pts = find_curve(doc, m, order, plan)
        if pts is None:
            continue
        x = [100 * p["fraction"] for p in pts]
        width = 2.5 if plan == "auto" else 1.2
        ax1.plot(x, [100 * p["map"] for p in pts], style, color=colour, linewidth=width, label=label)
        ax2.plot(x, [100 * (p["nfr"] or 0.0) for p in pts], style, color=colour, linewidth=width)
    ax1.axhline(100 * doc["old_to_old"]["map"], color="gray", linewidth=1, label="old-to-old")
    ax1.set(xlabel="gallery backfilled (%)", ylabel="mAP (%)", title="mAP")
    ax2.set(xlabel="gallery backfilled (%)", ylabel="NFR@1 (%)", title="negative-flip rate")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7)
    fig.suptitle(
        f"{doc.get('dataset')} {doc.get('allocation')}: query plans (mean of seeds {doc.get('seeds')}; "
        f"plans other than the paper's on the mixed order)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=RESULTS / "plans")
    args = ap.parse_args()
    text = summarise(args.root)
    for dataset in ("fashion-mnist", "digits"):
        curve = args.root / dataset / "expansion" / "curve.json"
        if curve.exists():
            plot(json.loads(curve.read_text()), args.root / f"{dataset}-expansion.png")
    for sub, plans in (("calibration", ("dual", "blend", "auto")), ("transform", ("transform", "blend", "auto"))):
        table = variants(args.root, sub, plans)
        if table:
            text += f"\n#### {sub.capitalize()} (expansion, mixed order)\n\n" + table
    (args.root / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
