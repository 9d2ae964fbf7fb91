"""Query plans over a mixed gallery, as mathematics shared by the offline evaluator and the service.

During an upgrade the gallery holds two kinds of items: those still on the old model (their old
vector) and those already backfilled (their new vector). A *plan* says how a query scores each
kind, so that one merged ranking comes out. Each plan is one object in its own module, registered
once (``models.plans.registry``): ``paper``, ``dual``, ``transform`` and ``blend`` here, in that
order; ``auto`` (``models.plans.auto``) is the chooser among them. A new plan is a new module
beside these, imported below, and its test.
"""

from __future__ import annotations

# isort: off
# The built-in plans register on import; this order is the order of every list of choices.
from models.plans import paper, dual, transform, blend  # noqa: F401

# isort: on
from models.plans.auto import (
    NFR_SLACK,
    REASONS,
    START_PLAN,
    Candidate,
    Chosen,
    candidates,
    choose,
    describe,
    estimate_final_nfr,
    nfr_bound,
    requestable,
    start_plan,
)
from models.plans.calibration import CALIBRATIONS, RAW, Calibration, fit_calibration, fit_match_probability, fit_zscore
from models.plans.linear_map import DEFAULT_RIDGE, MIN_PAIRS, TRANSFORMS, LinearMap, fit_transform
from models.plans.registry import (
    AUTO,
    FitInput,
    Plan,
    PlanSpec,
    UpgradeShape,
    build_spec,
    get_plan,
    mixed_scores,
    plan_names,
    register_plan,
    unregister_plan,
)

PAPER = paper.NAME  # the paper's plan: the reference every other plan's curve is drawn beside

__all__ = [
    "AUTO",
    "CALIBRATIONS",
    "DEFAULT_RIDGE",
    "MIN_PAIRS",
    "NFR_SLACK",
    "PAPER",
    "RAW",
    "START_PLAN",
    "TRANSFORMS",
    "Calibration",
    "REASONS",
    "Candidate",
    "Chosen",
    "FitInput",
    "LinearMap",
    "Plan",
    "PlanSpec",
    "UpgradeShape",
    "build_spec",
    "candidates",
    "choose",
    "describe",
    "estimate_final_nfr",
    "fit_calibration",
    "fit_match_probability",
    "fit_transform",
    "fit_zscore",
    "get_plan",
    "mixed_scores",
    "nfr_bound",
    "plan_names",
    "register_plan",
    "requestable",
    "start_plan",
    "unregister_plan",
]
