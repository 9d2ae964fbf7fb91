"""Backfill curves under query plans (``models.plans``), offline, as the live service measures them.

At every fraction f the first f of the backfill order is on the new model. What each plan may
use is what the live upgrade would have at that cut: the old vectors of the whole gallery, the
new vectors of the items backfilled so far (and the probes' new embeddings, encoded at the
upgrade's start), and the (old, new) pairs of the backfilled items for ``transform``.

``auto`` follows the live chooser: a seeded probe subset of the gallery, used as leave-one-out
queries, scores every candidate plan at the cut; the plan ``models.plans.choose`` picks (the
highest probe mAP within the NFR bound among those at least the old system's probe mAP, else the
fallback its ``reason`` names) is the one evaluated on the held-out queries. Each auto point
also keeps the final-NFR estimate the bound came from (``final_nfr_estimate``), so its error
against the finished upgrade's NFR can be reported (``models.experiment.check_plans``), and the
paired standard error of its mAP against the old system's (``map_vs_old_se``). The bound is the
user's ``nfr_target`` when given, else relative (``models.plans.nfr_bound``): the finished
upgrade's NFR@1 estimated at that cut from the probes and the items backfilled so far, plus one
point. At 0% nothing has
moved and the start plan is ``dual``, safe by construction (it is the old system exactly).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from models.metrics import RetrievalResult, evaluate_scores, negative_flip_rate
from models.plans import (
    AUTO,
    START_PLAN,
    Candidate,
    Chosen,
    PlanSpec,
    UpgradeShape,
    build_spec,
    choose,
    estimate_final_nfr,
    get_plan,
    mixed_scores,
    nfr_bound,
    plan_names,
    requestable,
)
from models.plans import candidates as plan_candidates

DEFAULT_NFR_TARGET: float | None = None  # relative: the estimated final NFR@1 + 1 point
DEFAULT_PROBES = 1000


@dataclass
class Spaces:
    """The query and gallery embeddings of one (old, new) model pair, on one device."""

    q_old: torch.Tensor
    q_new: torch.Tensor
    g_old: torch.Tensor
    g_new: torch.Tensor
    q_labels: np.ndarray
    g_labels: np.ndarray

    @property
    def same_space(self) -> bool:
        return self.g_old.shape[1] == self.g_new.shape[1]


def candidates_for(spaces: Spaces, compatible: bool) -> list[str]:
    """The plans a live upgrade of these models may serve (``models.plans.candidates``)."""
    return plan_candidates(UpgradeShape(same_dimension=spaces.same_space, compatible=compatible))


def _held_out_point(
    cache: dict[str, tuple[dict[str, Any], RetrievalResult]],
    name: str,
    spec: PlanSpec,
    s: Spaces,
    mask: torch.Tensor,
    base: RetrievalResult,
    fraction: float,
    k: int | None,
) -> dict[str, Any]:
    """One plan's point at one cut on the held-out queries, its per-query results kept in ``cache``
    (scored once, and only when asked for: auto's candidates it does not serve are never scored)."""
    if name not in cache:
        r = evaluate_scores(mixed_scores(spec, s.q_old, s.q_new, s.g_old, s.g_new, mask), s.q_labels, s.g_labels, k=k)
        point = {
            "fraction": fraction,
            "map": r.map,
            "top1": r.top1,
            "nfr": negative_flip_rate(base.top1_correct, r.top1_correct),
        }
        cache[name] = (point, r)
    return cache[name][0]


def paired_se(ap: np.ndarray, ap_old: np.ndarray) -> float | None:
    """The standard error of a mAP's difference from the old system's on the same queries: the
    per-query APs' differences have standard deviation sd, their mean sd / sqrt(n) (paired, so the
    queries' own difficulty cancels). The noise a curve's "never below the old system" is read
    within; None with fewer than two queries."""
    d = np.asarray(ap, np.float64) - np.asarray(ap_old, np.float64)
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None


def flip_difference_se(old_correct: np.ndarray, a_correct: np.ndarray, b_correct: np.ndarray) -> float | None:
    """The standard error of NFR@1(a) - NFR@1(b) on the same queries: over the n queries the old
    system answers right, each is a flip of a or not, of b or not; the NFRs' difference is the
    mean of (flip_a - flip_b), its standard error their standard deviation / sqrt(n). The noise a
    curve's "no more flips than the finished upgrade + 1 point" is read within."""
    right = np.asarray(old_correct, bool)
    d = (~np.asarray(a_correct, bool)[right]).astype(np.float64) - (~np.asarray(b_correct, bool)[right])
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None


def choose_probes(n_gallery: int, size: int, seed: int) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).permutation(n_gallery)[: min(size, n_gallery)])


def plan_curves(
    spaces: Spaces,
    order: np.ndarray,
    fractions: Sequence[float],
    plans: Sequence[str],
    *,
    compatible: bool = True,
    calibration: str = "raw",
    transform: str = "lstsq",
    nfr_target: float | None = DEFAULT_NFR_TARGET,
    probe_size: int = DEFAULT_PROBES,
    k: int | None = None,
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """One list of points per plan asked for (any registered plan, or ``auto``). A plan is
    evaluated on any model pair whose dimensions it can score; ``compatible`` only narrows what
    ``auto`` may choose, as it does live."""
    unknown = [p for p in plans if p not in requestable()]
    if unknown:
        raise ValueError(f"unknown plan(s) {unknown}; choose from {', '.join(requestable())}")
    shape = UpgradeShape(same_dimension=spaces.same_space, compatible=True)
    for p in plans:
        why = None if p == AUTO else get_plan(p).refusal(shape)
        if why is not None:
            raise ValueError(why)
    s = spaces
    g_old_np, g_new_np = s.g_old.cpu().numpy(), s.g_new.cpu().numpy()
    n_g = len(g_old_np)
    base = evaluate_scores(s.q_old @ s.g_old.T, s.q_labels, s.g_labels, k=k)
    final = evaluate_scores(s.q_new @ s.g_new.T, s.q_labels, s.g_labels, k=k)  # every plan at 100%
    probes = choose_probes(n_g, probe_size, seed)
    exclude = probes.astype(np.int64)
    p_labels = s.g_labels[probes]
    p_old, p_new = s.g_old[probes], s.g_new[probes]
    p_base = evaluate_scores(p_old @ s.g_old.T, p_labels, s.g_labels, k=k, exclude=exclude)
    candidates = candidates_for(s, compatible) if AUTO in plans else []
    wanted = sorted(set(p for p in plans if p != AUTO) | set(candidates), key=list(plan_names()).index)
    out: dict[str, list[dict[str, Any]]] = {p: [] for p in plans}
    order_t = torch.as_tensor(order, device=s.g_old.device)
    for f in fractions:
        n = int(round(f * n_g))
        mask = torch.zeros(n_g, dtype=torch.bool, device=s.g_old.device)
        mask[order_t[:n]] = True
        moved = np.asarray(order[:n])
        new_space = np.concatenate([g_new_np[probes], g_new_np[moved]])
        new_labels = np.concatenate([s.g_labels[probes], s.g_labels[moved]])
        specs = {
            p: build_spec(
                p,
                calibration=calibration,
                old_space=g_old_np,
                new_space=new_space,
                pairs=(g_old_np[moved], g_new_np[moved]),
                transform=transform,
                seed=seed,
                old_labels=s.g_labels,
                new_labels=new_labels,
            )
            for p in wanted
        }
        held_out: dict[str, tuple[dict[str, Any], RetrievalResult]] = {}  # plan -> (point, per query)

        for p in specs:
            if p in out:  # a candidate auto does not serve here is never scored on the held-out queries
                out[p].append(_held_out_point(held_out, p, specs[p], s, mask, base, float(f), k))
        if AUTO in plans:
            measured = []
            for p in candidates:
                r = evaluate_scores(
                    mixed_scores(specs[p], p_old, p_new, s.g_old, s.g_new, mask),
                    p_labels,
                    s.g_labels,
                    k=k,
                    exclude=exclude,
                )
                measured.append(Candidate(p, r.map, negative_flip_rate(p_base.top1_correct, r.top1_correct)))
            rest = np.setdiff1d(moved, probes)
            estimate = estimate_final_nfr(
                g_old_np[probes], g_new_np[probes], p_labels, g_old_np[rest], g_new_np[rest], s.g_labels[rest]
            )
            bound = nfr_bound(nfr_target, estimate)
            rule = Chosen(START_PLAN, "start") if n == 0 else choose(measured, bound, START_PLAN, p_base.map)
            chosen = rule.plan
            out[AUTO].append(
                {
                    **_held_out_point(held_out, chosen, specs[chosen], s, mask, base, float(f), k),
                    "plan": chosen,
                    "reason": rule.reason,
                    "map_vs_old_se": paired_se(held_out[chosen][1].ap, base.ap),
                    "nfr_vs_final_se": flip_difference_se(
                        base.top1_correct, held_out[chosen][1].top1_correct, final.top1_correct
                    ),
                    "final_nfr_estimate": estimate,
                    "nfr_bound": bound,
                    "candidates": {c.plan: {"map": c.map, "nfr": c.nfr} for c in measured},
                }
            )
    return out
