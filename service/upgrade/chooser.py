"""Fitting the query plans of a live upgrade at a checkpoint, and choosing the one to serve.

At a consistent cut (``service.upgrade.checkpoints``) every candidate plan is fitted from what
SQL holds then (``models.plans.build_spec``: each space's calibration from the gallery's old
vectors and the new-model vectors there are, ``transform``'s map from the old and new vectors of
the items backfilled so far) and measured on the probes. A fixed plan is refitted and measured
alone; ``auto`` serves the candidate with the highest probe mAP whose probe NFR@1 is within the
upgrade's bound and whose probe mAP is at least the old system's (the baseline's ``old_map``), or
says in the checkpoint's ``reason`` which promise it gave way on (``models.plans.choose``, the
rule the offline evaluator applies too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from models.plans import (
    AUTO,
    START_PLAN,
    Candidate,
    PlanSpec,
    UpgradeShape,
    build_spec,
    choose,
    estimate_final_nfr,
    get_plan,
    nfr_bound,
)
from models.plans import candidates as plan_candidates
from service.db.schema import ModelRow, Upgrade
from service.repositories import catalog
from service.repositories import items as item_repo
from service.settings import Settings
from service.upgrade import probes
from service.upgrade.plans import ServingPlan


def candidates(session: Session, up: Upgrade) -> list[str]:
    """The plans this upgrade may serve: a fixed plan alone; under ``auto`` every registered plan
    that does not refuse these two models (``Plan.refusal``)."""
    if up.plan != AUTO:
        return [up.plan]
    old, new = catalog.get_model(session, up.from_model), catalog.get_model(session, up.to_model)
    if old is None or new is None:  # a model row gone: promise nothing about the pair
        return plan_candidates(UpgradeShape(same_dimension=False, compatible=False))
    return plan_candidates(shape_of(old, new))


def shape_of(old: ModelRow, new: ModelRow) -> UpgradeShape:
    """What the plans ask of an upgrade from ``old`` to ``new``."""
    return UpgradeShape(
        same_dimension=new.embedding_dim == old.embedding_dim, compatible=new.compatible_with == old.name
    )


@dataclass(frozen=True)
class Pairs:
    """The (old vector, new vector) pairs of backfilled items at this cut (a seeded sample of at
    most ``HOTREFRESH_PLAN_FIT_PAIRS``): what T is fitted on and the final NFR is estimated from."""

    ids: np.ndarray
    old: np.ndarray
    new: np.ndarray


def moved_pairs(
    session: Session, settings: Settings, up: Upgrade, gallery: probes.Gallery, probe_set: probes.ProbeSet
) -> Pairs | None:
    on_new = gallery.on(up.to_model)
    if not on_new.any():
        return None
    old_dim = probe_set.old_queries.shape[1] if probe_set.old_queries is not None else gallery.dim(up.from_model)
    moved = gallery.ids[on_new]
    if len(moved) > settings.plan_fit_pairs:  # a seeded sample bounds the refit at any gallery size
        moved = np.sort(np.random.default_rng(int(up.id)).choice(moved, settings.plan_fit_pairs, replace=False))
    got, old_vecs = item_repo.get_vectors(session, up.from_model, moved.tolist())
    if not len(got) or old_vecs.shape[1] != old_dim:
        return None
    row = {int(i): r for r, i in enumerate(gallery.ids.tolist())}
    new_part = gallery.dense(up.to_model, probe_set.queries.shape[1])
    return Pairs(np.asarray(got, np.int64), old_vecs, new_part[[row[int(i)] for i in got]])


def fit(
    settings: Settings,
    up: Upgrade,
    name: str,
    gallery: probes.Gallery,
    probe_set: probes.ProbeSet,
    pairs: Pairs | None,
    codes: tuple[np.ndarray, np.ndarray],
) -> PlanSpec:
    """One plan fitted at this cut (``codes``: ``probes.label_codes`` of the probes and gallery)."""
    on_new = gallery.on(up.to_model)
    g_codes, p_codes = codes
    old_labels = g_codes[gallery.on(up.from_model)]
    new_labels = np.concatenate([p_codes, g_codes[on_new]])
    old_space = gallery.parts.get(up.from_model)
    new_space = np.concatenate([probe_set.queries, gallery.parts.get(up.to_model, probe_set.queries[:0])])
    return build_spec(
        name,
        calibration=settings.plan_calibration,
        old_space=old_space,
        new_space=new_space,
        pairs=None if pairs is None else (pairs.old, pairs.new),
        transform=settings.plan_transform,
        seed=int(up.id),
        old_labels=old_labels,
        new_labels=new_labels,
    )


def estimated_final_nfr(
    gallery: probes.Gallery, probe_set: probes.ProbeSet, pairs: Pairs | None, codes: tuple[np.ndarray, np.ndarray]
) -> float | None:
    """``models.plans.estimate_final_nfr`` on the probes and the moved items' pairs (probes left out)."""
    if probe_set.old_queries is None or not len(probe_set.ids):
        return None
    g_codes, p_codes = codes
    if pairs is None:
        s_old = np.zeros((0, probe_set.old_queries.shape[1]), np.float32)
        s_new = np.zeros((0, probe_set.queries.shape[1]), np.float32)
        s_labels = np.zeros(0, np.int64)
    else:
        by_id = dict(zip(gallery.ids.tolist(), g_codes.tolist(), strict=True))
        keep = ~np.isin(pairs.ids, probe_set.ids)
        s_old, s_new = pairs.old[keep], pairs.new[keep]
        s_labels = np.asarray([by_id.get(int(i), probes.UNLABELED) for i in pairs.ids[keep]], np.int64)
    return estimate_final_nfr(probe_set.old_queries, probe_set.queries, p_codes, s_old, s_new, s_labels)


@dataclass(frozen=True)
class Choice:
    plan: ServingPlan  # what replicas serve from this checkpoint on
    measurement: probes.Measurement  # the chosen plan's, at this cut
    candidates: dict[str, dict[str, float | None]]  # every candidate's probe map and nfr
    nfr_bound: float | None = None  # auto: the probe NFR@1 the choice stayed within
    reason: str | None = None  # auto: why this plan (a key of models.plans.REASONS)


def choose_at_cut(
    session: Session,
    settings: Settings,
    up: Upgrade,
    current: ServingPlan,
    gallery: probes.Gallery,
    step: int,
) -> Choice:
    """Fit and measure every candidate at this cut; the serving plan from here on. The scoring
    run's step 0 serves the start plan whatever the measurements say: nothing has moved yet."""
    baseline = probes.baseline_of(up)
    if baseline is None:
        raise ValueError(f"upgrade {up.id} has no baseline yet: its scoring run takes one before any checkpoint")
    probe_set = baseline.probe_set()
    names = candidates(session, up)
    # Read once per cut: the pairs T is fitted on (auto's candidates always include transform),
    # and the label codes every fit and the final-NFR estimate share.
    wants_pairs = any(get_plan(n).fits_on_pairs for n in names)
    pairs = moved_pairs(session, settings, up, gallery, probe_set) if wants_pairs else None
    codes = probes.label_codes(probe_set.labels, gallery)
    measured: dict[str, tuple[ServingPlan, probes.Measurement]] = {}
    for name in names:
        plan = current.bumped(fit(settings, up, name, gallery, probe_set, pairs, codes))
        measured[name] = (plan, probes.measure(session, baseline, up.to_model, gallery, plan=plan))
    table = {name: {"map": m.map, "nfr": m.nfr} for name, (_, m) in measured.items()}
    bound, reason = None, None
    if up.plan != AUTO:
        chosen = up.plan
    else:
        target = up.nfr_target if up.nfr_target is not None else settings.nfr_target
        bound = nfr_bound(target, None if target is not None else estimated_final_nfr(gallery, probe_set, pairs, codes))
        if step == 0 and START_PLAN in measured:
            chosen, reason = START_PLAN, "start"
        else:
            rule = choose(
                [Candidate(n, m.map, m.nfr) for n, (_, m) in measured.items()],
                bound,
                safe=START_PLAN,
                old_map=baseline.old_map,
            )
            chosen, reason = rule.plan, rule.reason
    plan, measurement = measured[chosen]
    return Choice(plan, measurement, table, bound, reason)
