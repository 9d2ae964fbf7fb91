"""``transform``: the new query against old vectors mapped into the new space by a linear map T
fitted on the (old, new) vector pairs of the items already backfilled (``models.plans.linear_map``),
new vectors as they are. The transformed old vectors are calibrated as a space of their own
(their scores spread unlike the new vectors' they approximate). Before ``MIN_PAIRS`` pairs
there is no T, and old vectors are scored as ``dual`` scores them."""

from __future__ import annotations

from models.plans.calibration import Calibration
from models.plans.linear_map import MIN_PAIRS, LinearMap, fit_transform
from models.plans.registry import A, FitInput, Plan, PlanSpec, register_plan, require_old_query

NAME = "transform"


def fit_mapped(data: FitInput, t: LinearMap) -> Calibration:
    """The calibration of old vectors' scores under T: fitted on the old space mapped by T (with
    the old space's labels), or on the mapped pairs when no old space is given. Shared by the
    plans that use T."""
    if data.old_space is not None and len(data.old_space):
        return data.calibrate(t.apply(data.old_space), data.old_labels)
    assert data.pairs is not None
    return data.calibrate(t.apply(data.pairs[0]))


@register_plan
class Transform(Plan):
    name = NAME
    summary = "the new query, old vectors mapped by a map fitted on the backfilled pairs"
    colour = "tab:purple"
    fits_on_pairs = True

    def fit(self, data: FitInput) -> PlanSpec:
        old_cal, new_cal = data.old_calibration(), data.new_calibration()
        if data.pairs is None or len(data.pairs[0]) < MIN_PAIRS:
            return PlanSpec(self.name, old_cal, new_cal)
        t = fit_transform(data.pairs[0], data.pairs[1], data.transform)
        return PlanSpec(self.name, fit_mapped(data, t), new_cal, t)

    def needs_old_query(self, spec: PlanSpec) -> bool:
        return spec.transform is None

    def old_query(self, spec: PlanSpec, q_old: A | None, q_new: A) -> tuple[A, Calibration]:
        if spec.transform is not None:
            return spec.transform.query_side(q_new), spec.old
        return require_old_query(self.name, q_old), spec.old
