"""``blend``: an item not yet backfilled scores the mean of what ``dual`` and ``transform`` give it
(the old query's calibrated score and the transformed new query's), new vectors as they are.

Both terms are linear in the old vector, so the old segment is still searched with one query,
``q_old / scale_old + (q_new W^T) / scale_T`` (halved), and one shift: no extra search. Before
T exists it scores as ``dual``."""

from __future__ import annotations

from models.plans.calibration import Calibration
from models.plans.linear_map import MIN_PAIRS, fit_transform
from models.plans.registry import A, FitInput, Plan, PlanSpec, register_plan, require_old_query
from models.plans.transform import fit_mapped

NAME = "blend"


@register_plan
class Blend(Plan):
    name = NAME
    summary = "old vectors scored by the mean of dual's and transform's calibrated scores"
    colour = "tab:orange"
    fits_on_pairs = True

    def fit(self, data: FitInput) -> PlanSpec:
        old_cal, new_cal = data.old_calibration(), data.new_calibration()
        if data.pairs is None or len(data.pairs[0]) < MIN_PAIRS:
            return PlanSpec(self.name, old_cal, new_cal)
        t = fit_transform(data.pairs[0], data.pairs[1], data.transform)
        return PlanSpec(self.name, old_cal, new_cal, t, fit_mapped(data, t))

    def old_query(self, spec: PlanSpec, q_old: A | None, q_new: A) -> tuple[A, Calibration]:
        q = require_old_query(self.name, q_old)
        if spec.transform is None:
            return q, spec.old
        a, b = spec.old, spec.mapped
        folded = 0.5 * (q / a.scale + spec.transform.query_side(q_new) / b.scale)
        return folded, Calibration(0.5 * (a.shift / a.scale + b.shift / b.scale), 1.0)
