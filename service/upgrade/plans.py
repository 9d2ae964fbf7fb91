"""The query plan a service serves during an upgrade, as data (docs/design.md, "Query plans").

A :class:`ServingPlan` is a fitted ``models.plans.PlanSpec`` bound to the upgrade's two models,
with a version. It lives in SQL (``serving_state.plan``), every replica re-reads it on the
index log's ``switch`` entry, and :func:`query_plan` turns it and a query's embeddings into the
index's ``QueryPlan``: which embedding scores which segment, with which calibration. Outside an
upgrade there is no plan (null): the query model against every segment, as before.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.plans import PLANS, Calibration, LinearMap, PlanSpec
from service.errors import BadRequest
from service.index import QueryPlan, SegmentQuery

# What POST /upgrade accepts: a fixed plan, or "auto" (the chooser, service.upgrade.checkpoints).
REQUESTABLE = (*PLANS, "auto")
START_PLAN = "dual"  # what "auto" serves until its first checkpoint: the old system, exactly


@dataclass(frozen=True)
class ServingPlan:
    spec: PlanSpec
    old_model: str
    new_model: str
    version: int = 1

    @property
    def name(self) -> str:
        return self.spec.name

    def query_models(self) -> list[str]:
        """The encoders a query needs under this plan, each run once per search."""
        if self.name == "paper" or (self.name == "transform" and self.spec.transform is not None):
            return [self.new_model]
        return [self.old_model, self.new_model]

    def bumped(self, spec: PlanSpec) -> ServingPlan:
        return replace(self, spec=spec, version=self.version + 1)

    def to_json(self) -> dict[str, Any]:
        t = self.spec.transform
        return {
            "name": self.name,
            "version": self.version,
            "old_model": self.old_model,
            "new_model": self.new_model,
            "old": self.spec.old.to_json(),
            "new": self.spec.new.to_json(),
            "mapped": self.spec.mapped.to_json(),
            "transform": None
            if t is None
            else {
                "kind": t.kind,
                "pairs": t.pairs,
                "shape": list(t.weight.shape),
                "weight_b64": base64.b64encode(np.ascontiguousarray(t.weight, "<f4").tobytes()).decode(),
            },
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ServingPlan:
        t = d.get("transform")
        transform = None
        if t:
            weight = np.frombuffer(base64.b64decode(t["weight_b64"]), "<f4").astype(np.float32).reshape(t["shape"])
            transform = LinearMap(weight, str(t["kind"]), int(t["pairs"]))
        mapped = Calibration(**d["mapped"]) if d.get("mapped") else Calibration()
        spec = PlanSpec(str(d["name"]), Calibration(**d["old"]), Calibration(**d["new"]), transform, mapped)
        return cls(spec, str(d["old_model"]), str(d["new_model"]), int(d.get("version", 1)))


def parse(d: dict[str, Any] | None) -> ServingPlan | None:
    return None if d is None else ServingPlan.from_json(d)


def starting(requested: str, old_model: str, new_model: str) -> ServingPlan:
    """The plan served from the moment an upgrade starts: the requested one, unfitted (raw scores,
    no transform yet), or ``dual`` for ``auto``."""
    if requested not in REQUESTABLE:
        raise BadRequest(f"unknown plan {requested!r}; expected one of {list(REQUESTABLE)}")
    name = START_PLAN if requested == "auto" else requested
    return ServingPlan(PlanSpec(name), old_model, new_model)


def _segment(model: str, queries: np.ndarray, cal: Calibration) -> SegmentQuery:
    # The plan's calibration is (s - shift) / scale; the index's is scale * s + shift.
    return SegmentQuery(model, queries, scale=1.0 / cal.scale, shift=-cal.shift / cal.scale)


def query_plan(plan: ServingPlan, embeddings: dict[str, np.ndarray], segments: set[str]) -> QueryPlan:
    """The index's plan for one batch of queries (``embeddings``: model -> (m, D) queries)."""
    spec, q_new = plan.spec, embeddings[plan.new_model]
    parts = []
    if plan.old_model in segments:
        # One query per segment whatever the plan (``PlanSpec.old_queries``: blend's two terms
        # are folded into one query and one affine calibration).
        queries, cal = spec.old_queries(embeddings.get(plan.old_model), q_new)
        parts.append(_segment(plan.old_model, queries, cal))
    if plan.new_model in segments:
        parts.append(_segment(plan.new_model, q_new, spec.new))
    return QueryPlan.of(parts)
