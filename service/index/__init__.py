"""The mixed index (docs/design.md, docs/index.md): segments per model, moves in O(B·D), query
plans, snapshots. See docs/index.md."""

from service.index.backend import (
    BACKEND_KINDS,
    BackendFactory,
    VectorBackend,
    backend_factory,
    create_backend,
    cuda_available,
    factory_from_settings,
)
from service.index.errors import (
    DimensionError,
    DuplicateIdError,
    IndexInputError,
    SnapshotError,
    UnknownIdError,
    UnknownSegmentError,
)
from service.index.mixed import ArrayHits, MixedIndex, merge_segments
from service.index.plan import Hit, QueryPlan, SegmentQuery
from service.index.rwlock import RWLock

__all__ = [
    "BACKEND_KINDS",
    "ArrayHits",
    "BackendFactory",
    "DimensionError",
    "DuplicateIdError",
    "Hit",
    "IndexInputError",
    "MixedIndex",
    "QueryPlan",
    "RWLock",
    "SegmentQuery",
    "SnapshotError",
    "UnknownIdError",
    "UnknownSegmentError",
    "VectorBackend",
    "backend_factory",
    "create_backend",
    "cuda_available",
    "factory_from_settings",
    "merge_segments",
]
