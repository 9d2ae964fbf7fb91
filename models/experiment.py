"""One allocation, end to end: train old, RACT / vanilla / BCT / independent new models per seed,
evaluate every method x ordering on the held-out test set, aggregate mean ± std over seeds and
check the paper's four claims.

Training only ever sees the training split; the evaluation queries and gallery come from the
held-out test split (:func:`models.data.eval_split`), so nothing here is tuned on them.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch

from models.checkpoint import load_checkpoint
from models.data import allocate, eval_split, load_dataset
from models.encoders import default_device
from models.evaluate import DEFAULT_FRACTIONS, evaluate_backfill, write_outputs
from models.plan_curves import DEFAULT_NFR_TARGET
from models.plans import AUTO, PAPER
from models.train import TrainConfig, train_and_save
from models.uncertainty import MARGIN, PAPER_ORDERINGS, RANDOM

log = logging.getLogger("hotrefresh.experiment")

LOSS_OF_METHOD = {"ract": "ract", "vanilla": "vanilla", "bct": "bct", "ract+bct": "ract+bct", "independent": "none"}
CHECK_FRACTIONS = (0.2, 0.4, 0.6, 0.8)


class _CommonTrainArgs(TypedDict):
    """The ``TrainConfig`` arguments every model of one seed shares."""

    embedding_dim: int
    batch_size: int
    lr: float
    seed: int


@dataclass
class ExperimentConfig:
    allocation: str = "expansion"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    methods: list[str] = field(default_factory=lambda: ["ract", "vanilla", "bct", "independent"])
    orderings: list[str] = field(default_factory=lambda: list(PAPER_ORDERINGS))
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    old_arch: str = "conv2"
    new_arch: str = "conv4"
    embedding_dim: int = 64
    epochs_old: int = 3
    epochs_new: int = 3
    batch_size: int = 256
    lr: float = 3e-3
    tau: float = 0.05
    lam: float = 1.0
    topk: int | None = None
    train_limit: int | None = None  # use the first N training images (a seeded subset)
    n_queries: int = 2000
    n_gallery: int = 8000
    k: int | None = None  # None: full-ranking mAP
    data_root: str | None = None
    dataset: str = "fashion-mnist"  # models.data.DATASETS
    # Tuning mode: hold out ``validation_size`` TRAINING images as queries+gallery and train on the
    # rest; the test split is never read.
    validation_size: int | None = None
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method tau/lam/topk
    # Query plans (models.plans): [PAPER] is the paper's protocol; others add a curve each.
    plans: list[str] = field(default_factory=lambda: [PAPER])
    calibration: str = "raw"
    transform: str = "lstsq"
    nfr_target: float | None = DEFAULT_NFR_TARGET

    @classmethod
    def quick(cls, allocation: str = "expansion") -> ExperimentConfig:
        """Under 10 minutes on 2 shared cores: RACT and vanilla, random and margin, 10% steps."""
        return cls(
            allocation=allocation,
            seeds=[0],
            methods=["ract", "vanilla"],
            orderings=[RANDOM.name, MARGIN.name],
            epochs_old=2,
            epochs_new=2,
            train_limit=12000,
            n_queries=1000,
            n_gallery=4000,
        )


def _train_subset(cfg: ExperimentConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_dataset(cfg.dataset, "train", cfg.data_root)
    if cfg.validation_size:
        x, y = x[_validation_idx(cfg, len(y)) :], y[_validation_idx(cfg, len(y)) :]
    if cfg.train_limit and cfg.train_limit < len(y):
        keep = np.sort(np.random.default_rng(10_000 + seed).permutation(len(y))[: cfg.train_limit])
        x, y = x[keep], y[keep]
    return x, y


def _validation_idx(cfg: ExperimentConfig, n: int) -> int:
    """Training images [0, v) are the validation set in tuning mode (Fashion-MNIST is shuffled)."""
    v = int(cfg.validation_size or 0)
    if not 0 < v < n:
        raise ValueError(f"validation_size must be in (0, {n})")
    return v


def _eval_images(cfg: ExperimentConfig) -> tuple[np.ndarray, np.ndarray]:
    if cfg.validation_size:
        x, y = load_dataset(cfg.dataset, "train", cfg.data_root)
        v = _validation_idx(cfg, len(y))
        return x[:v], y[:v]
    return load_dataset(cfg.dataset, "test", cfg.data_root)


def run_seed(cfg: ExperimentConfig, seed: int, out_dir: Path, models_dir: Path, progress: bool) -> dict[str, Any]:
    """Trains the models of one seed (reusing checkpoints already there) and evaluates them."""
    device = default_device()
    x, y = _train_subset(cfg, seed)
    alloc = allocate(cfg.allocation, y, seed)
    mdir = models_dir / cfg.allocation / f"seed{seed}"
    common: _CommonTrainArgs = {
        "embedding_dim": cfg.embedding_dim,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": seed,
    }
    old_path = mdir / "old.pt"
    timings: dict[str, float] = {}
    if not old_path.exists():
        t0 = time.perf_counter()
        ocfg = TrainConfig(arch=cfg.old_arch, epochs=cfg.epochs_old, **common)
        train_and_save(
            x[alloc.old_idx],
            y[alloc.old_idx],
            ocfg,
            old_path,
            f"{cfg.allocation}-s{seed}-old",
            device=device,
            progress=progress,
        )
        timings["old"] = time.perf_counter() - t0
    new_paths = {}
    for method in cfg.methods:
        path = mdir / f"{method}.pt"
        if not path.exists():
            t0 = time.perf_counter()
            hp: dict[str, Any] = {"tau": cfg.tau, "lam": cfg.lam, "topk": cfg.topk, **cfg.overrides.get(method, {})}
            ncfg = TrainConfig(
                arch=cfg.new_arch,
                epochs=cfg.epochs_new,
                loss=LOSS_OF_METHOD[method],
                **hp,
                **common,
            )
            train_and_save(
                x[alloc.new_idx],
                y[alloc.new_idx],
                ncfg,
                path,
                f"{cfg.allocation}-s{seed}-{method}",
                old_path=old_path,
                old_classes=alloc.old_classes,
                device=device,
                progress=progress,
            )
            timings[method] = time.perf_counter() - t0
        new_paths[method] = path
    xt, yt = _eval_images(cfg)
    q, g = eval_split(yt, n_queries=cfg.n_queries, n_gallery=cfg.n_gallery, seed=0)
    t0 = time.perf_counter()
    doc = evaluate_backfill(
        load_checkpoint(old_path, device=device),
        {m: load_checkpoint(p, device=device) for m, p in new_paths.items()},
        xt,
        yt,
        q,
        g,
        orderings=cfg.orderings,
        fractions=cfg.fractions,
        k=cfg.k,
        seed=seed,
        meta={"dataset": cfg.dataset, "allocation": cfg.allocation},
        plans=cfg.plans,
        calibration=cfg.calibration,
        transform=cfg.transform,
        nfr_target=cfg.nfr_target,
    )
    timings["evaluate"] = time.perf_counter() - t0
    doc["train_seconds"] = timings
    doc["n_train_old"], doc["n_train_new"] = len(alloc.old_idx), len(alloc.new_idx)
    write_outputs(doc, out_dir / f"seed{seed}")
    return doc


def _mean_std(values: list[float | None]) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v))


def aggregate(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± std over seeds, in the same schema (``*_std`` fields added, ``seeds`` listed)."""
    first = docs[0]
    out: dict[str, Any] = {k: first[k] for k in ("dataset", "allocation", "metric", "n_queries", "n_gallery")}
    if "plan_settings" in first:
        out["plan_settings"] = first["plan_settings"]
    out["seed"] = None
    out["seeds"] = [d["seed"] for d in docs]

    def ms(getter: Any) -> dict[str, float | None]:
        res: dict[str, float | None] = {}
        for key in ("map", "top1"):
            m, s = _mean_std([getter(d)[key] for d in docs])
            res[key], res[f"{key}_std"] = m, s
        return res

    out["old_to_old"] = ms(lambda d: d["old_to_old"])
    out["new_to_new"] = {m: ms(lambda d, m=m: d["new_to_new"][m]) for m in first["new_to_new"]}
    out["curves"] = []
    for ci, c in enumerate(first["curves"]):
        points = []
        for pi, p in enumerate(c["points"]):
            pt: dict[str, Any] = {"fraction": p["fraction"]}
            for key in ("map", "top1", "nfr"):
                pt[key], pt[f"{key}_std"] = _mean_std([d["curves"][ci]["points"][pi][key] for d in docs])
            if "plan" in p:  # auto: which plan each seed served at this step, and why
                seeds = [d["curves"][ci]["points"][pi] for d in docs]
                pt["plans"] = [q["plan"] for q in seeds]
                pt["reasons"] = [q.get("reason") for q in seeds]
                if all(q.get("final_nfr_estimate") is not None for q in seeds):
                    pt["final_nfr_estimate"] = float(np.mean([q["final_nfr_estimate"] for q in seeds]))
                for key in ("map_vs_old_se", "nfr_vs_final_se"):  # of the mean over seeds
                    if all(q.get(key) is not None for q in seeds):
                        pt[key] = float(np.sqrt(np.sum(np.square([q[key] for q in seeds]))) / len(seeds))
            points.append(pt)
        curve = {"method": c["method"], "ordering": c["ordering"], "points": points}
        if "plan" in c:
            curve["plan"] = c["plan"]
        out["curves"].append(curve)
    return out


def find_curve(doc: dict[str, Any], method: str, ordering: str, plan: str = PAPER) -> list[dict[str, Any]] | None:
    """The points of one (method, ordering, plan) curve; a curve without a plan field is ``paper``'s."""
    for c in doc["curves"]:
        if c["method"] == method and c["ordering"] == ordering and c.get("plan", PAPER) == plan:
            return c["points"]
    return None


NOISE_SE = 2.0  # the promises are read within this many paired standard errors on the held-out queries


def estimate_errors(points: list[dict[str, Any]], final_nfr: float | None) -> dict[str, Any] | None:
    """The final-NFR estimate at every step of an ``auto`` curve against the finished upgrade's
    NFR@1 on the held-out queries (``final_nfr``): each step's error (estimate - truth), their mean
    (the bias) and the largest in size. None for a curve without estimates (an absolute target)."""
    steps = [(float(p["fraction"]), p.get("final_nfr_estimate")) for p in points]
    known = [(f, float(e)) for f, e in steps if e is not None and 0.0 < f < 1.0]
    if final_nfr is None or not known:
        return None
    errors = {f"{round(100 * f)}%": e - final_nfr for f, e in known}
    return {
        "final_nfr": final_nfr,
        "errors": errors,
        "mean_error": float(np.mean(list(errors.values()))),
        "largest_error": max(errors.values(), key=abs),
    }


def check_plans(
    doc: dict[str, Any],
    plan: str = AUTO,
    baseline: tuple[str, str] = ("ract", MARGIN.name),
    min_gain_pts: float = 4.0,
    nfr_slack_pts: float = 1.0,
) -> dict[str, Any]:
    """Checks (e)-(g) of the query-plan issue for every (method, ordering) curve of ``plan``:
    (e) mAP at every step >= old-to-old (strictly, and within ``NOISE_SE`` paired standard errors
    where the points carry them); (f) NFR@1 at every step <= the finished upgrade's + 1 point;
    (g) mean mAP over the steps >= the paper's method (RACT, ``paper`` plan, margin) + 4. With
    them, the final-NFR estimate's errors (:func:`estimate_errors`) and why each step's plan was
    served (``reasons``)."""
    o2o = doc["old_to_old"]["map"]
    ref = find_curve(doc, baseline[0], baseline[1], PAPER)
    ref_mean = float(np.mean([p["map"] for p in ref])) if ref else None
    out: dict[str, Any] = {}
    for c in doc["curves"]:
        if c.get("plan", PAPER) != plan:
            continue
        pts = c["points"]
        maps = [p["map"] for p in pts]
        nfrs = [p["nfr"] or 0.0 for p in pts]
        mean = float(np.mean(maps))
        lowest = int(np.argmin(maps))
        ses = [p.get("map_vs_old_se") for p in pts]
        e = {"holds": min(maps) >= o2o - 1e-9, "lowest_map": min(maps), "old_to_old": o2o}
        if all(se is not None for se in ses):
            e["holds_within_noise"] = all(m >= o2o - NOISE_SE * se - 1e-9 for m, se in zip(maps, ses, strict=True))
            e["se_at_lowest"] = ses[lowest]
        highest = int(np.argmax(nfrs))
        f = {
            "holds": max(nfrs) <= nfrs[-1] + nfr_slack_pts / 100 + 1e-9,
            "highest_nfr": max(nfrs),
            "final_nfr": nfrs[-1],
        }
        nfr_ses = [p.get("nfr_vs_final_se") for p in pts]
        if all(se is not None for se in nfr_ses):
            f["holds_within_noise"] = all(
                n <= nfrs[-1] + nfr_slack_pts / 100 + NOISE_SE * se + 1e-9 for n, se in zip(nfrs, nfr_ses, strict=True)
            )
            f["se_at_highest"] = nfr_ses[highest]
        res: dict[str, Any] = {
            "e_map_never_below_old": e,
            "f_nfr_within_final_plus_1pt": f,
            "g_mean_map_4pt_above_paper": {
                "holds": ref_mean is not None and mean >= ref_mean + min_gain_pts / 100,
                "mean_map": mean,
                "paper_ract_margin_mean_map": ref_mean,
            },
            "final_nfr_estimate": estimate_errors(pts, nfrs[-1]),
        }
        if any("reason" in p for p in pts):
            res["reasons"] = [p.get("reason") for p in pts]
        out[f"{c['method']}, {c['ordering']}"] = res
    return out


def check_claims(doc: dict[str, Any]) -> dict[str, Any]:
    """The issue's checks (a)-(d) on one curve document (a seed or the mean over seeds)."""
    res: dict[str, Any] = {}
    o2o = doc["old_to_old"]["map"]
    ract_r = find_curve(doc, "ract", RANDOM.name)
    van_r = find_curve(doc, "vanilla", RANDOM.name)
    if ract_r:
        at0 = ract_r[0]["map"]
        res["a_ract_compatible"] = {"holds": at0 >= o2o, "ract_map_at_0": at0, "old_to_old_map": o2o}
    if ract_r and van_r:
        pairs = {}
        for p, q in zip(ract_r, van_r, strict=True):
            if any(abs(p["fraction"] - f) < 1e-9 for f in CHECK_FRACTIONS):
                pairs[f"{round(100 * p['fraction'])}%"] = {"ract": p["nfr"], "vanilla": q["nfr"]}
        holds = all(
            v["ract"] is not None and v["vanilla"] is not None and v["ract"] < v["vanilla"] for v in pairs.values()
        ) and len(pairs) == len(CHECK_FRACTIONS)
        res["b_ract_nfr_below_vanilla"] = {"holds": holds, "nfr": pairs}
    drops = {}
    for c in doc["curves"]:
        if c["method"] != "ract":
            continue
        maps = [p["map"] for p in c["points"]]
        drops[c["ordering"]] = max([0.0] + [100 * (a - b) for a, b in zip(maps, maps[1:], strict=False)])
    if drops:
        res["c_ract_no_step_drop_over_0.5pt"] = {
            "holds": all(d <= 0.5 for d in drops.values()),
            "largest_drop_pts": drops,
        }
    means = {}
    for m in ("ract", "vanilla", "bct", "ract+bct", "independent"):
        r, mg = find_curve(doc, m, RANDOM.name), find_curve(doc, m, MARGIN.name)
        if r and mg:
            means[m] = {
                MARGIN.name: float(np.mean([p["map"] for p in mg])),
                RANDOM.name: float(np.mean([p["map"] for p in r])),
            }
    if "ract" in means:
        res["d_margin_mean_ge_random"] = {
            "holds": means["ract"][MARGIN.name] >= means["ract"][RANDOM.name],
            "mean_map_over_steps": means,
        }
    return res


def _holds(res: dict[str, Any]) -> dict[str, bool]:
    """Whether each check of one curve holds (the reports beside them, estimates and reasons, left out)."""
    return {k: v["holds"] for k, v in res.items() if isinstance(v, dict) and "holds" in v}


def run_experiment(
    cfg: ExperimentConfig, out_dir: str | Path, *, models_dir: str | Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Runs every seed, writes per-seed and aggregated curve.json/.md/.png and checks.json."""
    out = Path(out_dir) / cfg.allocation
    mdir = Path(models_dir) if models_dir else Path("var/experiment-models")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    docs = []
    for seed in cfg.seeds:
        t0 = time.perf_counter()
        docs.append(run_seed(cfg, seed, out, mdir, progress))
        log.info("%s seed %d done in %.0f s", cfg.allocation, seed, time.perf_counter() - t0)
    summary = aggregate(docs) if len(docs) > 1 else docs[0]
    summary["config"] = asdict(cfg)
    summary["checks"] = check_claims(summary)
    summary["checks_per_seed"] = {str(d["seed"]): {k: v["holds"] for k, v in check_claims(d).items()} for d in docs}
    if AUTO in cfg.plans:
        summary["plan_checks"] = check_plans(summary)
        summary["plan_checks_per_seed"] = {
            str(d["seed"]): {curve: _holds(res) for curve, res in check_plans(d).items()} for d in docs
        }
    write_outputs(summary, out)
    (out / "checks.json").write_text(json.dumps(summary["checks"], indent=1) + "\n")
    if "plan_checks" in summary:
        plan_checks = {"mean": summary["plan_checks"], "per_seed": summary["plan_checks_per_seed"]}
        (out / "plan_checks.json").write_text(json.dumps(plan_checks, indent=1) + "\n")
    return summary
