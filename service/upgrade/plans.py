"""The query plan a service serves during an upgrade, as data (docs/design.md, "Query plans").

A :class:`ServingPlan` is a fitted ``models.plans.PlanSpec`` bound to the upgrade's two models,
with a version. It lives in SQL (``serving_state.plan``, one :class:`PlanRecord`), every replica
re-reads it on the index log's ``switch`` entry, and :func:`query_plan` turns it and a query's
embeddings into the index's ``QueryPlan``: which embedding scores which segment, with the plan's
own ``Calibration`` (the index applies it as it is). Outside an upgrade there is no plan (null):
the query model against every segment, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from models.carried_map import weight_from_b64, weight_to_b64
from models.plans import AUTO, Calibration, LinearMap, PlanSpec, requestable, start_plan
from service.errors import BadRequest
from service.index import QueryPlan, SegmentQuery
from service.records import Record, StoredRecordError
from service.records import parse as parse_record

__all__ = ["AUTO", "PlanRecord", "ServingPlan", "parse", "query_plan", "requestable", "starting"]


class CalibrationRecord(Record):
    shift: float = 0.0
    scale: float = 1.0

    def value(self) -> Calibration:
        return Calibration(self.shift, self.scale)

    @classmethod
    def of(cls, c: Calibration) -> CalibrationRecord:
        return cls(shift=c.shift, scale=c.scale)


class TransformRecord(Record):
    kind: str
    pairs: int
    shape: tuple[int, int]
    weight_b64: str

    def value(self) -> LinearMap:
        return LinearMap(weight_from_b64(self.weight_b64, self.shape), self.kind, self.pairs)

    @classmethod
    def of(cls, t: LinearMap) -> TransformRecord:
        rows, cols = t.weight.shape
        return cls(kind=t.kind, pairs=t.pairs, shape=(int(rows), int(cols)), weight_b64=weight_to_b64(t.weight))


class PlanRecord(Record):
    """``serving_state.plan``: the fitted plan and the two models it binds."""

    name: str
    version: int = 1
    old_model: str
    new_model: str
    old: CalibrationRecord = CalibrationRecord()
    new: CalibrationRecord = CalibrationRecord()
    mapped: CalibrationRecord | None = None
    transform: TransformRecord | None = None


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
        return [self.old_model, self.new_model] if self.spec.needs_old_query() else [self.new_model]

    def bumped(self, spec: PlanSpec) -> ServingPlan:
        return replace(self, spec=spec, version=self.version + 1)

    def record(self) -> PlanRecord:
        s = self.spec
        return PlanRecord(
            name=s.name,
            version=self.version,
            old_model=self.old_model,
            new_model=self.new_model,
            old=CalibrationRecord.of(s.old),
            new=CalibrationRecord.of(s.new),
            mapped=CalibrationRecord.of(s.mapped),
            transform=None if s.transform is None else TransformRecord.of(s.transform),
        )

    def to_json(self) -> dict[str, Any]:
        return self.record().model_dump(mode="json")

    @classmethod
    def of(cls, r: PlanRecord) -> ServingPlan:
        mapped = r.mapped.value() if r.mapped is not None else Calibration()
        transform = r.transform.value() if r.transform is not None else None
        try:
            spec = PlanSpec(r.name, r.old.value(), r.new.value(), transform, mapped)
        except ValueError as e:  # a plan this build does not register
            raise StoredRecordError(f"stored serving plan (serving_state.plan) cannot be served: {e}") from None
        return cls(spec, r.old_model, r.new_model, r.version)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ServingPlan:
        return cls.of(parse_record(PlanRecord, d, "serving plan (serving_state.plan)"))


def parse(d: dict[str, Any] | None) -> ServingPlan | None:
    return None if d is None else ServingPlan.from_json(d)


def starting(requested: str, old_model: str, new_model: str) -> ServingPlan:
    """The plan served from the moment an upgrade starts: the requested one, unfitted (raw scores,
    no transform yet), or auto's start plan."""
    if requested not in requestable():
        raise BadRequest(f"unknown plan {requested!r}; expected one of {list(requestable())}")
    return ServingPlan(PlanSpec(start_plan(requested)), old_model, new_model)


def query_plan(plan: ServingPlan, embeddings: dict[str, np.ndarray], segments: set[str]) -> QueryPlan:
    """The index's plan for one batch of queries (``embeddings``: model -> (m, D) queries): one
    query and one calibration per segment, as the plan gives them (blend's two terms are folded
    into one query and one affine calibration)."""
    spec, q_new = plan.spec, embeddings[plan.new_model]
    q_old = embeddings.get(plan.old_model)
    parts = []
    if plan.old_model in segments:
        queries, cal = spec.plan.old_query(spec, q_old, q_new)
        parts.append(SegmentQuery(plan.old_model, queries, cal))
    if plan.new_model in segments:
        queries, cal = spec.plan.new_query(spec, q_old, q_new)
        parts.append(SegmentQuery(plan.new_model, queries, cal))
    return QueryPlan.of(parts)
