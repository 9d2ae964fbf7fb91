"""Query plans: which query embedding to score each segment with, and how to put its scores on a
common scale before the merge.

The paper's plan is one embedding (the new model's) against every segment with raw inner
products. Plans with an embedding per segment (of that segment's dimension) and a calibration
per segment need no change of the index's interface. The calibration is the query plans' own
type (``models.plans.Calibration``, ``(score - shift) / scale``): what the plan fitted is what
the merge applies, with no conversion between conventions on the way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from models.plans.calibration import RAW, Calibration
from service.index.errors import IndexInputError
from service.index.validation import as_queries


@dataclass(frozen=True)
class Hit:
    id: int
    score: float
    model: str


@dataclass(frozen=True)
class SegmentQuery:
    """The queries (m, D_segment) for one segment and its score calibration. The calibration's
    ``scale`` must be positive: a segment's top-k under a negative scale would be its bottom-k."""

    model: str
    queries: np.ndarray
    calibration: Calibration = RAW

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise IndexInputError("a segment query needs a model name")
        cal = self.calibration
        if not isinstance(cal, Calibration):
            raise IndexInputError(f"a segment's calibration is a models.plans.Calibration, got {type(cal).__name__}")
        if not (math.isfinite(cal.scale) and cal.scale > 0):
            raise IndexInputError(f"scale must be a positive finite number, got {cal.scale}")
        if not math.isfinite(cal.shift):
            raise IndexInputError(f"shift must be finite, got {cal.shift}")
        object.__setattr__(self, "queries", as_queries(self.queries))


@dataclass(frozen=True)
class QueryPlan:
    """Per-segment queries, all with the same number of query rows ``m``. ``default`` (set by
    :meth:`single` without models) is applied to every segment the index holds at search time,
    which keeps the paper's plan valid while segments are created and dropped."""

    segments: tuple[SegmentQuery, ...] = ()
    default: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        segs = tuple(self.segments)
        object.__setattr__(self, "segments", segs)
        if self.default is not None:
            object.__setattr__(self, "default", as_queries(self.default))
        if not segs and self.default is None:
            raise IndexInputError("a query plan needs at least one segment query")
        names = [s.model for s in segs]
        if len(set(names)) != len(names):
            raise IndexInputError(f"a query plan names a segment twice: {names}")
        rows = {len(s.queries) for s in segs} | ({len(self.default)} if self.default is not None else set())
        if len(rows) != 1:
            raise IndexInputError(f"every segment query must have the same number of queries, got {sorted(rows)}")

    @property
    def num_queries(self) -> int:
        return len(self.default) if self.default is not None else len(self.segments[0].queries)

    @classmethod
    def single(cls, queries: np.ndarray, models: Iterable[str] | None = None) -> QueryPlan:
        """The paper's plan: the same embedding, raw scores, against ``models`` (default: every
        segment present when the search runs)."""
        q = as_queries(queries)
        if models is None:
            return cls(default=q)
        return cls(tuple(SegmentQuery(m, q) for m in models))

    @classmethod
    def of(cls, segments: Sequence[SegmentQuery]) -> QueryPlan:
        return cls(tuple(segments))
