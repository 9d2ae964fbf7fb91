"""The mixed index: one segment per model (vector space), each gallery item live in exactly one.

Backfilling an item moves it: its old vector leaves the old segment (parked, so a rollback needs
no re-encoding) and its new vector is appended to the new segment, O(B·D) for a batch of B
whatever the gallery size. A search runs a ``QueryPlan`` over the segments and merges one top-k;
since an id is live in one segment only, no id can appear twice in a result.

Every method validates its whole request before changing anything, so an error leaves the index
as it was; a fair readers-writer lock lets searches run concurrently with each other while
changes are applied one at a time between them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from models.plans.calibration import RAW
from service.index.backend import BackendFactory, VectorBackend, backend_factory, factory_from_settings
from service.index.errors import (
    DimensionError,
    DuplicateIdError,
    IndexInputError,
    SnapshotError,
    UnknownIdError,
    UnknownSegmentError,
)
from service.index.files import save_json
from service.index.flat import FlatBackend
from service.index.plan import Hit, QueryPlan, SegmentQuery
from service.index.rwlock import RWLock
from service.index.validation import as_ids, as_vectors, check_k

if TYPE_CHECKING:
    from service.settings import Settings

SNAPSHOT_FORMAT = "hotrefresh-index/1"
MANIFEST = "manifest.json"
_SNAPSHOT_FILE = re.compile(r"^v\d+-[sp]\d+\.")


@dataclass(frozen=True)
class ArrayHits:
    """Merged results as arrays, for callers that score many queries (live NFR probes):
    ``ids`` is -1 and ``scores`` -inf where fewer than k items exist; ``segment`` indexes
    ``models``."""

    scores: np.ndarray
    ids: np.ndarray
    segment: np.ndarray
    models: tuple[str, ...]

    def to_hits(self) -> list[list[Hit]]:
        models = self.models
        out: list[list[Hit]] = []
        for s_row, i_row, m_row in zip(self.scores.tolist(), self.ids.tolist(), self.segment.tolist(), strict=True):
            out.append([Hit(i, s, models[m]) for s, i, m in zip(s_row, i_row, m_row, strict=True) if i >= 0])
        return out


class MixedIndex:
    def __init__(self, backend: str | BackendFactory = "auto", **options: Any) -> None:
        self._factory: BackendFactory = backend_factory(backend, **options) if isinstance(backend, str) else backend
        self._segments: dict[str, VectorBackend] = {}
        self._parked: dict[str, FlatBackend] = {}  # model -> old vectors of items moved out of it
        self._lock = RWLock()
        self._version = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> MixedIndex:
        return cls(factory_from_settings(settings))

    @property
    def backend_kind(self) -> str:
        return getattr(self._factory, "kind", "custom")

    # --- reading ------------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """Incremented by every change; lets callers tell whether the index moved under them."""
        return self._version

    def models(self) -> list[str]:
        with self._lock.read():
            return list(self._segments)

    def dim(self, model: str) -> int:
        with self._lock.read():
            return self._segment(model).dim

    def counts(self) -> dict[str, int]:
        """Live items per segment."""
        with self._lock.read():
            return {name: seg.count() for name, seg in self._segments.items()}

    def parked_counts(self) -> dict[str, int]:
        """Old vectors kept for rollback, per model they were moved out of."""
        with self._lock.read():
            return {name: p.count() for name, p in self._parked.items()}

    def __len__(self) -> int:
        with self._lock.read():
            return sum(seg.count() for seg in self._segments.values())

    @overload
    def model_of(self, ids: int) -> str | None: ...

    @overload
    def model_of(self, ids: Iterable[int] | np.ndarray) -> list[str | None]: ...

    def model_of(self, ids: int | Iterable[int] | np.ndarray) -> str | None | list[str | None]:
        """The segment each id is live in, None where it is not live."""
        if isinstance(ids, int | np.integer):
            single, arr = True, as_ids(np.asarray([ids]), unique=False)
        else:
            single, arr = False, as_ids(ids, unique=False)
        with self._lock.read():
            names = list(self._segments)
            loc = self._locate(arr)
        out = [names[j] if j >= 0 else None for j in loc.tolist()]
        return out[0] if single else out

    def vectors(self, model: str, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """Live vectors of ``ids`` in ``model``'s segment (all must be live there)."""
        arr = as_ids(ids, unique=False)
        with self._lock.read():
            return self._segment(model).vectors(arr)

    def search(self, plan: QueryPlan | np.ndarray, k: int = 10) -> list[list[Hit]]:
        """One merged top-k per query; a bare array of queries means the paper's plan."""
        return self.search_arrays(plan, k).to_hits()

    def search_arrays(self, plan: QueryPlan | np.ndarray, k: int = 10) -> ArrayHits:
        k = check_k(k)
        if not isinstance(plan, QueryPlan):
            plan = QueryPlan.single(plan)
        m = plan.num_queries
        with self._lock.read():
            results = [(sq, *seg.search(sq.queries, k)) for seg, sq in self._resolve(plan)]
        return merge_segments(results, m, k)

    # --- changing -----------------------------------------------------------------------------
    def add(self, model: str, ids: Iterable[int] | np.ndarray, vecs: np.ndarray) -> None:
        """New items, live in ``model``'s segment (created on first use with the vectors' dimension)."""
        arr = as_ids(ids)
        with self._lock.write():
            dim = self._segments[model].dim if model in self._segments else None
            v = as_vectors(vecs, len(arr), dim)
            live = self._locate(arr) >= 0
            if live.any():
                raise DuplicateIdError(f"ids already live in the index: {arr[live][:10].tolist()}")
            if len(arr) == 0:
                return
            self._segment_for(model, v.shape[1]).add(arr, v)
            self._version += 1

    def move(self, ids: Iterable[int] | np.ndarray, to_model: str, vecs: np.ndarray) -> None:
        """Make ``to_model`` the live segment of ``ids`` with these vectors. The vectors they leave
        behind are parked under their old model for :meth:`rollback`; an id already in
        ``to_model`` just gets its vector replaced (re-encoding twice is harmless)."""
        arr = as_ids(ids)
        with self._lock.write():
            dim = self._segments[to_model].dim if to_model in self._segments else None
            v = as_vectors(vecs, len(arr), dim)
            loc = self._locate(arr)
            if (loc < 0).any():
                raise UnknownIdError(f"ids not live in the index: {arr[loc < 0][:10].tolist()}")
            if len(arr) == 0:
                return
            self._move_locked(arr, to_model, v)
            self._version += 1

    def upsert(self, model: str, ids: Iterable[int] | np.ndarray, vecs: np.ndarray) -> None:
        """Make ``model`` the live segment of ``ids`` whether or not they are live yet: new ids are
        added, live ones moved (old vectors parked). For replaying a change log, where an entry
        may already be applied."""
        arr = as_ids(ids)
        with self._lock.write():
            dim = self._segments[model].dim if model in self._segments else None
            v = as_vectors(vecs, len(arr), dim)
            if len(arr) == 0:
                return
            live = self._locate(arr) >= 0
            self._move_locked(arr[live], model, v[live])
            if (~live).any():
                self._segment_for(model, v.shape[1]).add(arr[~live], v[~live])
            self._version += 1

    def delete(self, ids: Iterable[int] | np.ndarray, *, missing_ok: bool = False) -> None:
        """Remove items for good: their live vectors and any parked ones. With ``missing_ok``,
        ids that are not live are skipped (replaying a change log) instead of refused."""
        arr = as_ids(ids)
        with self._lock.write():
            loc = self._locate(arr)
            if missing_ok:
                arr, loc = arr[loc >= 0], loc[loc >= 0]
            if (loc < 0).any():
                raise UnknownIdError(f"ids not live in the index: {arr[loc < 0][:10].tolist()}")
            names = list(self._segments)
            for j in np.unique(loc).tolist():
                self._segments[names[j]].remove(arr[loc == j])
            for model in list(self._parked):
                self._discard_parked(model, arr)
            self._version += 1

    def rollback(self, to_model: str) -> int:
        """Move every item that has a parked vector of ``to_model`` back to it, without
        re-encoding. Items that never had a ``to_model`` vector (added under another model)
        stay where they are. Returns the number of items moved back."""
        with self._lock.write():
            parked = self._parked.get(to_model)
            if parked is None and to_model not in self._segments:
                raise UnknownSegmentError(f"no segment or parked vectors for model {to_model!r}")
            if parked is None or parked.count() == 0:
                return 0
            ids, vecs = parked.export()
            loc = self._locate(ids)
            names = list(self._segments)
            for j in np.unique(loc[loc >= 0]).tolist():
                self._segments[names[j]].remove(ids[loc == j])
            self._segment_for(to_model, vecs.shape[1]).add(ids, vecs)
            del self._parked[to_model]
            self._version += 1
            return len(ids)

    def drop_segment(self, model: str, *, force: bool = False) -> None:
        """Forget a model: its segment and its parked vectors (the commit of an upgrade). A segment
        that still has live items is only dropped with ``force``, since they would vanish from
        search."""
        with self._lock.write():
            seg = self._segments.get(model)
            if seg is None and model not in self._parked:
                raise UnknownSegmentError(f"no segment or parked vectors for model {model!r}")
            if seg is not None and seg.count() and not force:
                raise IndexInputError(
                    f"segment {model!r} still holds {seg.count()} live items; move or delete them first"
                )
            self._segments.pop(model, None)
            self._parked.pop(model, None)
            self._version += 1

    def create_segment(self, model: str, dim: int) -> None:
        """An empty segment, so a plan can name a model before any item is on it."""
        with self._lock.write():
            if model in self._segments:
                if self._segments[model].dim != dim:
                    raise DimensionError(f"segment {model!r} exists with dimension {self._segments[model].dim}")
                return
            self._segment_for(model, dim)
            self._version += 1

    # --- snapshots ----------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write every segment's ids and vectors (``.npy``) and a JSON manifest into ``directory``.
        Files are versioned and each is written to a temporary file then ``os.replace``d, the
        manifest last, so a crash mid-save leaves the previous snapshot loadable. Holds the read
        lock throughout (writes wait; searches go on) so the snapshot is one consistent version."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock.read():
            v = self._version
            manifest: dict[str, Any] = {
                "format": SNAPSHOT_FORMAT,
                "version": v,
                "backend": self.backend_kind,
                "segments": [],
                "parked": [],
            }
            for i, (name, seg) in enumerate(self._segments.items()):
                files = seg.save(directory, f"v{v}-s{i}")
                manifest["segments"].append(
                    {"model": name, "dim": seg.dim, "count": seg.count(), "backend": seg.kind, "files": files}
                )
            for i, (name, parked) in enumerate(self._parked.items()):
                files = parked.save(directory, f"v{v}-p{i}")
                manifest["parked"].append(
                    {
                        "model": name,
                        "dim": parked.dim,
                        "count": parked.count(),
                        "backend": parked.kind,
                        "files": files,
                    }
                )
            save_json(directory / MANIFEST, manifest)
        referenced = {f for part in ("segments", "parked") for e in manifest[part] for f in e["files"].values()}
        for path in directory.iterdir():
            if _SNAPSHOT_FILE.match(path.name) and path.name not in referenced:
                path.unlink(missing_ok=True)
        return directory / MANIFEST

    @classmethod
    def load(cls, directory: str | Path, backend: str | BackendFactory = "auto", **options: Any) -> MixedIndex:
        """Restore a snapshot with bulk array loads (no per-row work), into any backend."""
        import json

        directory = Path(directory)
        try:
            manifest = json.loads((directory / MANIFEST).read_text())
        except (OSError, ValueError) as exc:
            raise SnapshotError(f"no readable index snapshot in {directory}: {exc}") from exc
        if manifest.get("format") != SNAPSHOT_FORMAT:
            raise SnapshotError(f"unknown snapshot format {manifest.get('format')!r} in {directory}")
        index = cls(backend, **options)
        try:
            for entry in manifest["segments"]:
                seg = index._factory(int(entry["dim"]))
                seg.load(directory, entry["files"])
                _check_entry(entry, seg)
                index._segments[entry["model"]] = seg
            for entry in manifest["parked"]:
                parked = FlatBackend(int(entry["dim"]))
                parked.load(directory, entry["files"])
                _check_entry(entry, parked)
                index._parked[entry["model"]] = parked
        except (OSError, KeyError, ValueError) as exc:
            if isinstance(exc, SnapshotError):
                raise
            raise SnapshotError(f"snapshot in {directory} is incomplete or inconsistent: {exc}") from exc
        all_ids = [seg.ids() for seg in index._segments.values()]
        if all_ids:
            merged = np.concatenate(all_ids)
            if np.unique(merged).size != merged.size:
                raise SnapshotError(f"snapshot in {directory} has an id live in two segments")
        index._version = int(manifest["version"])
        return index

    # --- internals (callers hold the lock) ----------------------------------------------------
    def _segment(self, model: str) -> VectorBackend:
        try:
            return self._segments[model]
        except KeyError:
            raise UnknownSegmentError(f"no segment for model {model!r}; have {list(self._segments)}") from None

    def _segment_for(self, model: str, dim: int) -> VectorBackend:
        if not isinstance(model, str) or not model:
            raise IndexInputError("a model name must be a non-empty string")
        seg = self._segments.get(model)
        if seg is None:
            seg = self._segments[model] = self._factory(dim)
        return seg

    def _parked_for(self, model: str, dim: int) -> FlatBackend:
        parked = self._parked.get(model)
        if parked is None:
            parked = self._parked[model] = FlatBackend(dim)
        return parked

    def _move_locked(self, ids: np.ndarray, to_model: str, vecs: np.ndarray) -> None:
        """``move`` after validation: every id is live, ``vecs`` fit ``to_model``."""
        if len(ids) == 0:
            return
        loc = self._locate(ids)
        names = list(self._segments)
        for j in np.unique(loc).tolist():
            src = names[j]
            sel = ids[loc == j]
            old = self._segments[src].remove(sel)
            if src != to_model:
                self._parked_for(src, old.shape[1]).add(sel, old)
        self._discard_parked(to_model, ids)
        self._segment_for(to_model, vecs.shape[1]).add(ids, vecs)

    def _discard_parked(self, model: str, ids: np.ndarray) -> None:
        parked = self._parked.get(model)
        if parked is not None:
            hit = parked.contains(ids)
            if hit.any():
                parked.remove(ids[hit])

    def _locate(self, ids: np.ndarray) -> np.ndarray:
        """Index (in segment order) of the segment each id is live in, -1 where none."""
        loc = np.full(len(ids), -1, dtype=np.int64)
        for j, seg in enumerate(self._segments.values()):
            loc[seg.contains(ids)] = j
        return loc

    def _resolve(self, plan: QueryPlan) -> list[tuple[VectorBackend, SegmentQuery]]:
        if plan.default is not None:
            named = {sq.model for sq in plan.segments}
            extra = [SegmentQuery(name, plan.default) for name in self._segments if name not in named]
            queries = [*plan.segments, *extra]
        else:
            queries = list(plan.segments)
        resolved = []
        for sq in queries:
            seg = self._segment(sq.model)
            if sq.queries.shape[1] != seg.dim:
                raise DimensionError(
                    f"queries for segment {sq.model!r} have dimension {sq.queries.shape[1]}, "
                    f"the segment has dimension {seg.dim}"
                )
            resolved.append((seg, sq))
        return resolved


def _check_entry(entry: dict[str, Any], backend: VectorBackend) -> None:
    if backend.count() != int(entry["count"]) or backend.dim != int(entry["dim"]):
        raise SnapshotError(
            f"segment {entry['model']!r}: manifest says {entry['count']}x{entry['dim']}, "
            f"files hold {backend.count()}x{backend.dim}"
        )


def merge_segments(results: Sequence[tuple[SegmentQuery, np.ndarray, np.ndarray]], m: int, k: int) -> ArrayHits:
    """The query plan's merge, whatever searched the segments (this index, or Milvus:
    ``service.api.serving.milvus``): each segment's (scores, ids) top-k, (m, k) best first with
    id -1 for none, put on the common scale by its calibration, then one top-k per query."""
    parts = []
    for j, (sq, scores, ids) in enumerate(results):
        if sq.calibration != RAW:
            scores = sq.calibration.apply(scores).astype(np.float32, copy=False)
        parts.append((scores, ids, j))
    return _merge(parts, m, k, tuple(sq.model for sq, _, _ in results))


def _merge(parts: list[tuple[np.ndarray, np.ndarray, int]], m: int, k: int, names: tuple[str, ...]) -> ArrayHits:
    """Merge per-segment top-k lists into one top-k per query (ties keep segment order)."""
    if not parts:
        empty_f = np.full((m, 0), -np.inf, dtype=np.float32)
        empty_i = np.full((m, 0), -1, dtype=np.int64)
        return ArrayHits(empty_f, empty_i, empty_i.copy(), names)
    scores = np.concatenate([p[0] for p in parts], axis=1).astype(np.float32, copy=False)
    ids = np.concatenate([p[1] for p in parts], axis=1)
    seg = np.concatenate([np.full(p[1].shape, p[2], dtype=np.int64) for p in parts], axis=1)
    scores = np.where(ids < 0, np.float32(-np.inf), scores)
    if scores.shape[1] > k:
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, ids, seg = (np.take_along_axis(a, top, axis=1) for a in (scores, ids, seg))
    order = np.argsort(-scores, axis=1, kind="stable")
    scores, ids, seg = (np.take_along_axis(a, order, axis=1) for a in (scores, ids, seg))
    return ArrayHits(scores, ids, seg, names)
