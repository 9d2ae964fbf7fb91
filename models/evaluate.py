"""The backfill-curve evaluator (paper Sec. 5): new queries against a gallery mixed of old and new
vectors, at each backfill fraction, for each new model x ordering.

The mixed gallery's scores are never recomputed: with ``S_old = Qnew @ Gold.T`` and
``S_new = Qnew @ Gnew.T`` computed once, the gallery at fraction f is ``S_old`` with the columns
of the first f of the backfill order taken from ``S_new``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import LoadedModel
from models.metrics import evaluate_scores, negative_flip_rate
from models.plan_curves import DEFAULT_NFR_TARGET, DEFAULT_PROBES, Spaces, plan_curves
from models.plans import AUTO, PAPER, UpgradeShape, get_plan
from models.uncertainty import backfill_order, get_ordering, ordering_names, score_uncertainty, without_classifier

METHODS = ("ract", "vanilla", "bct", "ract+bct", "independent")
DEFAULT_FRACTIONS = tuple(round(i / 10, 1) for i in range(11))


def parse_fractions(text: str) -> tuple[float, ...]:
    """ "0,10,20" (percent) or "0,0.1,0.2" (ratios) -> sorted ratios in [0, 1]."""
    vals = [float(v) for v in text.split(",") if v.strip()]
    if not vals:
        raise ValueError("no backfill fractions given")
    if max(vals) > 1.0:
        vals = [v / 100 for v in vals]
    if min(vals) < 0 or max(vals) > 1:
        raise ValueError(f"backfill fractions must lie in [0, 100]%, got {text!r}")
    return tuple(sorted(set(round(v, 6) for v in vals)))


def backfill_curve(
    q_new: torch.Tensor,
    g_old: torch.Tensor,
    g_new: torch.Tensor,
    q_labels: np.ndarray,
    g_labels: np.ndarray,
    order: np.ndarray,
    fractions: Sequence[float],
    old_top1_correct: np.ndarray,
    *,
    k: int | None = None,
    exclude: np.ndarray | None = None,
) -> list[dict[str, float | None]]:
    """One curve: mAP, top-1 and NFR@1 (Eq. 12) at each fraction of ``order`` backfilled.

    ``exclude`` (per query, a gallery column or -1) is the leave-one-out protocol of the service's
    live probes, whose queries are gallery items (see ``models.metrics.evaluate_scores``)."""
    s_old = q_new @ g_old.T
    s_new = q_new @ g_new.T
    order_t = torch.as_tensor(order, device=s_old.device)
    points = []
    for f in fractions:
        n = int(round(f * len(order)))
        s = s_old.clone()
        if n:
            cols = order_t[:n]
            s[:, cols] = s_new[:, cols]
        r = evaluate_scores(s, q_labels, g_labels, k=k, exclude=exclude)
        points.append(
            {
                "fraction": float(f),
                "map": r.map,
                "top1": r.top1,
                "nfr": negative_flip_rate(old_top1_correct, r.top1_correct),
            }
        )
    return points


def evaluate_backfill(
    old: LoadedModel,
    new_models: dict[str, LoadedModel],
    images: np.ndarray,
    labels: np.ndarray,
    query_idx: np.ndarray,
    gallery_idx: np.ndarray,
    *,
    orderings: Iterable[str] | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    k: int | None = None,
    seed: int = 0,
    meta: dict[str, Any] | None = None,
    plans: Sequence[str] = (PAPER,),
    calibration: str = "raw",
    transform: str = "lstsq",
    nfr_target: float | None = DEFAULT_NFR_TARGET,
    probe_size: int = DEFAULT_PROBES,
) -> dict[str, Any]:
    """Evaluates every new model x ordering x plan; returns the ``curve.json`` document
    (docs/models.md). Curves carry a ``"plan"`` field unless only the paper's plan is asked for;
    an absent plan means ``paper``. ``orderings`` default: every registered one."""
    orderings = list(ordering_names() if orderings is None else orderings)
    for o in orderings:
        get_ordering(o)  # an unknown name is refused with the choices
    for m in new_models:
        if m not in METHODS:
            raise ValueError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    dev = old.device
    ql, gl = np.asarray(labels)[query_idx], np.asarray(labels)[gallery_idx]
    q_imgs, g_imgs = images[query_idx], images[gallery_idx]
    q_old = torch.from_numpy(old.embed_tensor(q_imgs)).to(dev)
    g_old_np = old.embed_tensor(g_imgs)
    g_old = torch.from_numpy(g_old_np).to(dev)
    base = evaluate_scores(q_old @ g_old.T, ql, gl, k=k)
    doc: dict[str, Any] = {
        **(meta or {}),
        "seed": seed,
        "metric": "map" if k is None else f"map@{k}",
        "n_queries": len(query_idx),
        "n_gallery": len(gallery_idx),
        "old_model": old.meta.name,
        "old_to_old": {"map": base.map, "top1": base.top1},
        "new_to_new": {},
        "curves": [],
    }
    plans = list(plans)
    only_paper = plans == [PAPER]
    if not only_paper:
        doc["plan_settings"] = dict(
            calibration=calibration, transform=transform, nfr_target=nfr_target, probe_size=probe_size
        )
    for method, model in new_models.items():
        same_dimension = model.meta.embedding_dim == old.meta.embedding_dim
        for p in plans:
            why = None if p == AUTO else get_plan(p).refusal(UpgradeShape(same_dimension, True))
            if why:
                raise ValueError(
                    f"{method}: embedding_dim {model.meta.embedding_dim} vs old {old.meta.embedding_dim}: {why}"
                )
        q_new = torch.from_numpy(model.embed_tensor(q_imgs)).to(dev)
        g_new = torch.from_numpy(model.embed_tensor(g_imgs)).to(dev)
        nn_ = evaluate_scores(q_new @ g_new.T, ql, gl, k=k)
        doc["new_to_new"][method] = {"map": nn_.map, "top1": nn_.top1, "model": model.meta.name}
        w, b = model.classifier_weights()
        spaces = Spaces(q_old, q_new, g_old, g_new, ql, gl)
        for ordering in orderings:
            if get_ordering(ordering).uses_classifier and w.shape[1] != g_old_np.shape[1]:
                raise ValueError(
                    f"{method}: ordering {ordering!r} puts old vectors through the new classifier, "
                    f"which needs equal dimensions; use {' or '.join(without_classifier())}"
                )
            pri = score_uncertainty(g_old_np, w, b, ordering, seed=seed)
            order = backfill_order(pri)
            if only_paper:
                points = backfill_curve(q_new, g_old, g_new, ql, gl, order, fractions, base.top1_correct, k=k)
                doc["curves"].append({"method": method, "ordering": ordering, "points": points})
                continue
            by_plan = plan_curves(
                spaces,
                order,
                fractions,
                plans,
                compatible=method != "independent",
                calibration=calibration,
                transform=transform,
                nfr_target=nfr_target,
                probe_size=probe_size,
                k=k,
                seed=seed,
            )
            for plan, points in by_plan.items():
                doc["curves"].append({"method": method, "ordering": ordering, "plan": plan, "points": points})
    return doc


def _pct(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def _cell(p: dict[str, Any], key: str) -> str:
    s = _pct(p.get(key))
    std = p.get(f"{key}_std")
    return s if std is None else f"{s} ± {100 * std:.2f}"


def curve_label(curve: dict[str, Any], sep: str) -> str:
    """ "method, ordering" and, when the curve names one, its plan."""
    parts = [curve["method"], curve["ordering"]] + ([curve["plan"]] if "plan" in curve else [])
    return sep.join(parts)


def markdown_table(doc: dict[str, Any]) -> str:
    """Two tables like the paper's: mAP and NFR@1 (in %) per method x ordering at each fraction."""
    curves = doc["curves"]
    if not curves:
        return ""
    fracs = [p["fraction"] for p in curves[0]["points"]]
    o2o = doc["old_to_old"]
    lines = [
        f"Old-to-old {doc.get('metric', 'map')}: {_cell(o2o, 'map')} (top-1 {_cell(o2o, 'top1')}). "
        "New-to-new: " + ", ".join(f"{m} {_cell(v, 'map')}" for m, v in doc.get("new_to_new", {}).items()) + ".",
        "",
    ]
    for key, title in (("map", "mAP (%)"), ("nfr", "NFR@1 (%)")):
        lines.append(f"| {title}: method, ordering | " + " | ".join(f"{round(100 * f)}%" for f in fracs) + " |")
        lines.append("| --- | " + " | ".join("---" for _ in fracs) + " |")
        for c in curves:
            lines.append(f"| {curve_label(c, ', ')} | " + " | ".join(_cell(p, key) for p in c["points"]) + " |")
        lines.append("")
    return "\n".join(lines)


def _line_style(ordering: str) -> str:
    try:
        return get_ordering(ordering).line_style
    except ValueError:  # a document written with an ordering this build does not have
        return "-"


def plot_curves(doc: dict[str, Any], path: str | Path) -> None:
    """mAP and NFR@1 against backfill fraction, one line per method x ordering."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = {
        "ract": "tab:red",
        "vanilla": "tab:blue",
        "bct": "tab:green",
        "ract+bct": "tab:purple",
        "independent": "tab:gray",
    }
    for c in doc["curves"]:
        x = [100 * p["fraction"] for p in c["points"]]
        kw = {"linestyle": _line_style(c["ordering"]), "color": colors.get(c["method"]), "marker": "."}
        label = curve_label(c, " / ")
        ax1.plot(x, [100 * p["map"] for p in c["points"]], label=label, **kw)
        nfr = [100 * p["nfr"] if p["nfr"] is not None else float("nan") for p in c["points"]]
        ax2.plot(x, nfr, label=label, **kw)
    ax1.axhline(100 * doc["old_to_old"]["map"], color="black", linewidth=1, label="old-to-old")
    # An incompatible (independent) model starts near chance and would flatten every other line:
    # zoom on the compatible ones and let it run off the axes.
    focus = [c for c in doc["curves"] if c["method"] != "independent"]
    clipped = ""
    if focus and len(focus) < len(doc["curves"]):
        lo = min([100 * p["map"] for c in focus for p in c["points"]] + [100 * doc["old_to_old"]["map"]])
        hi = max(100 * p["map"] for c in focus for p in c["points"])
        ax1.set_ylim(lo - 0.15 * (hi - lo) - 0.5, hi + 0.1 * (hi - lo) + 0.5)
        nfr_hi = max((100 * p["nfr"] for c in focus for p in c["points"] if p["nfr"] is not None), default=None)
        if nfr_hi is not None:
            ax2.set_ylim(0, 1.3 * nfr_hi + 0.5)
        clipped = " (independent clipped)"
    ax1.set(xlabel="gallery backfilled (%)", ylabel="mAP (%)", title="mAP, new queries vs mixed gallery" + clipped)
    ax2.set(xlabel="gallery backfilled (%)", ylabel="NFR@1 (%)", title="negative flip rate (Eq. 12)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2)
    title = f"{doc.get('dataset', '')} {doc.get('allocation', '')}".strip()
    if "seeds" in doc:
        title += f" (mean of seeds {doc['seeds']})"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_outputs(doc: dict[str, Any], out_dir: str | Path, stem: str = "curve") -> dict[str, Path]:
    """curve.json, curve.md and curve.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
    paths["json"].write_text(json.dumps(doc, indent=1) + "\n")
    paths["md"].write_text(markdown_table(doc) + "\n")
    plot_curves(doc, paths["png"])
    return paths
