"""``dual``: the old model's query against old vectors, the new model's against new vectors, each
space's scores calibrated onto one scale. It flips nothing at the switch (before any item moves
it is the old system exactly, which makes it the chooser's start plan) and needs no
compatibility at all: the spaces may differ in dimension."""

from __future__ import annotations

from models.plans.calibration import Calibration
from models.plans.registry import A, Plan, PlanSpec, register_plan, require_old_query

NAME = "dual"


@register_plan
class Dual(Plan):
    name = NAME
    summary = "the old query on old vectors, the new query on new vectors, each space calibrated"
    colour = "tab:green"

    def old_query(self, spec: PlanSpec, q_old: A | None, q_new: A) -> tuple[A, Calibration]:
        return require_old_query(self.name, q_old), spec.old
