"""``paper``: the new model's query against every vector, raw scores (the paper's hot refresh).

Old vectors are compared with a new-model query, so the new model must have been trained
backward-compatible with the old one, in the same dimension."""

from __future__ import annotations

from models.plans.calibration import Calibration
from models.plans.registry import A, FitInput, Plan, PlanSpec, UpgradeShape, register_plan

NAME = "paper"


@register_plan
class Paper(Plan):
    name = NAME
    summary = "the new query against every vector, raw scores (needs a compatible model of the same dimension)"
    colour = "tab:blue"
    wants_unbiased_backfill = False  # the paper's order: the hardest items first

    def refusal(self, upgrade: UpgradeShape) -> str | None:
        if not upgrade.same_dimension:
            return "the paper's plan compares the new query with old vectors: it needs models of the same dimension"
        if not upgrade.compatible:
            return "the paper's plan needs a new model declared backward-compatible with the old one"
        return None

    def fit(self, data: FitInput) -> PlanSpec:
        return PlanSpec(self.name)  # raw by definition

    def needs_old_query(self, spec: PlanSpec) -> bool:
        return False

    def old_query(self, spec: PlanSpec, q_old: A | None, q_new: A) -> tuple[A, Calibration]:
        return q_new, spec.old
