"""``auto``: the chooser, requestable as if it were a plan but not one. At every checkpoint it fits
and measures every candidate plan on the probes and serves the one with the highest probe mAP
whose probe NFR@1 stays within a bound and whose probe mAP is at least the old system's
(:func:`choose`); until the first checkpoint it serves
:data:`START_PLAN`, the old system exactly. The live service (``service.upgrade.chooser``) and
the offline evaluator (``models.plan_curves``) apply this rule, on this module's candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from models.plans.dual import Dual
from models.plans.registry import AUTO, UpgradeShape, get_plan, plan_names

START_PLAN = Dual.name  # what auto serves before anything moved: flips nothing
SUMMARY = "at each checkpoint, the plan with the best probe mAP within nfr_target"


def requestable() -> tuple[str, ...]:
    """What an upgrade may ask for: every registered plan, or ``auto``."""
    return (*plan_names(), AUTO)


def describe() -> str:
    """Each requestable name and what it does, for the HTTP schema's and the CLI's help."""
    return "; ".join([f"{n} ({get_plan(n).summary})" for n in plan_names()] + [f"{AUTO} ({SUMMARY})"])


def candidates(upgrade: UpgradeShape) -> list[str]:
    """The plans ``auto`` may serve on an upgrade of this shape: every plan that does not refuse it."""
    return [n for n in plan_names() if get_plan(n).refusal(upgrade) is None]


def start_plan(requested: str) -> str:
    """The plan served from the moment an upgrade starts: the one requested, or auto's start plan."""
    return START_PLAN if requested == AUTO else get_plan(requested).name


@dataclass(frozen=True)
class Candidate:
    plan: str
    map: float | None
    nfr: float | None


NFR_SLACK = 0.01  # the relative target: the finished upgrade's NFR@1 (estimated) plus one point


def estimate_final_nfr(
    p_old: np.ndarray,
    p_new: np.ndarray,
    p_labels: np.ndarray,
    s_old: np.ndarray,
    s_new: np.ndarray,
    s_labels: np.ndarray,
) -> float | None:
    """NFR@1 the finished upgrade will have, estimated from what exists at a checkpoint: the
    probes (old and new embeddings of gallery items, ``p_*``) and items already backfilled (their
    old and new vectors, ``s_*``, probes excluded). The probes search that sub-gallery leave-one-
    out once in the old space and once in the new; their flips are the estimate (the sub-gallery
    grows to the whole gallery at 100%, where it is exact). None without labelled probes."""
    from models.metrics import negative_flip_rate, top1_correct

    labels = np.asarray(p_labels)
    if len(labels) < 2 or not (labels >= 0).any():
        return None
    g_labels = np.concatenate([labels, np.asarray(s_labels)])
    exclude = np.arange(len(labels), dtype=np.int64)
    hits = []
    for q, s_part in ((p_old, s_old), (p_new, s_new)):
        q = np.asarray(q, np.float32)
        g = np.concatenate([q, np.asarray(s_part, np.float32).reshape(-1, q.shape[1])])
        hits.append(top1_correct(torch.from_numpy(q @ g.T), labels, g_labels, exclude=exclude))
    return negative_flip_rate(hits[0], hits[1])


def nfr_bound(nfr_target: float | None, estimated_final: float | None) -> float:
    """The probe NFR@1 a plan may reach under ``auto``: the user's absolute ``nfr_target`` when
    one is set; else the finished upgrade's estimated NFR plus one point (``NFR_SLACK``), i.e.
    flip no more of the old system's answers mid-way than the finished upgrade will. Without
    an estimate, 5%."""
    if nfr_target is not None:
        return nfr_target
    return 0.05 if estimated_final is None else estimated_final + NFR_SLACK


@dataclass(frozen=True)
class Chosen:
    """What the chooser serves at a cut, and why (a key of :data:`REASONS`)."""

    plan: str
    reason: str


# Why the chooser served what it served: stored with every auto checkpoint (``reason``).
REASONS = {
    "start": "nothing has moved yet: the start plan, the old system exactly",
    "within_bound": "the highest probe mAP among the candidates within the NFR bound that keep the old "
    "system's probe mAP",
    "below_old_within_bound": "every candidate within the NFR bound is below the old system's probe mAP: the "
    "lowest probe NFR among those that keep it",
    "none_within_bound": "no candidate is within the NFR bound: the lowest probe NFR among those that keep the "
    "old system's probe mAP",
    "none_at_old_map": "no candidate reaches the old system's probe mAP: the highest probe mAP",
    "unmeasured": "no candidate could be measured: the start plan",
}


def choose(
    candidates: list[Candidate], nfr_target: float, safe: str = START_PLAN, old_map: float | None = None
) -> Chosen:
    """The chooser's rule, live and offline. Two promises, the old system's mAP first: a candidate
    *keeps the old mAP* when its probe mAP is at least ``old_map`` (the old system's on the same
    probes; None: every candidate keeps it). Among those, the highest probe mAP whose probe NFR is
    within ``nfr_target``; when none is, the lowest probe NFR among those that keep the old mAP
    (falling below the old system is the worse break: every query sees it, a flip only the queries
    the old system answered); when none keeps it, the highest probe mAP. Ties go to the safe plan.
    Candidates without a measurement are never chosen unless nothing else is there."""
    measured = [c for c in candidates if c.map is not None and not math.isnan(c.map)]
    if not measured:
        return Chosen(safe, "unmeasured")

    def nfr(c: Candidate) -> float:
        return 0.0 if c.nfr is None or math.isnan(c.nfr) else c.nfr

    def best_map(cs: list[Candidate]) -> str:
        return max(cs, key=lambda c: (c.map or 0.0, c.plan == safe)).plan

    keeps = [c for c in measured if old_map is None or (c.map or 0.0) >= old_map - 1e-12]
    if not keeps:
        return Chosen(best_map(measured), "none_at_old_map")
    within = [c for c in keeps if nfr(c) <= nfr_target + 1e-12]
    if within:
        return Chosen(best_map(within), "within_bound")
    lowest = min(keeps, key=lambda c: (nfr(c), c.plan != safe, -(c.map or 0.0))).plan
    below = any(nfr(c) <= nfr_target + 1e-12 for c in measured)
    return Chosen(lowest, "below_old_within_bound" if below else "none_within_bound")
