"""Live NFR and mAP: a probe set of labeled gallery items, used as leave-one-out queries.

At upgrade start the probes' images are encoded with the new model (the queries the upgraded
system will ask) and the old system is measured once: old query vector against the old
gallery. At each checkpoint the same new-model queries go against the gallery exactly as SQL
holds it (each item's active-model vector), so NFR@1 (paper Eq. 12, via ``models.metrics``)
and mAP describe what users would get from the mixed index at that moment.

Without labeled items there are no probes, and NFR/mAP stay ``None`` ("unavailable"), never 0.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from models.metrics import evaluate_scores, negative_flip_rate
from models.plans import PAPER, PlanSpec, mixed_scores
from service.db.schema import Upgrade
from service.records import Record, parse
from service.repositories import items as item_repo
from service.upgrade.plans import ServingPlan

FULL_RANKING_MAX = 20_000  # larger galleries use mAP@100, as the paper does for large sets
UNLABELED = -1


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode()


def _unb64(text: str, rows: int, dim: int) -> np.ndarray:
    if not dim:
        return np.zeros((rows, 0), np.float32)
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32).reshape(rows, dim)


@dataclass
class ProbeSet:
    ids: np.ndarray  # (Q,) int64 gallery item ids
    labels: list[str]
    queries: np.ndarray  # (Q, D) float32: the new model's embedding of each probe's image
    # (Q, D_old): the old model's embedding of each probe's image (its stored old vector), the
    # old query of plans that score old vectors with it; None in upgrades recorded before plans
    old_queries: np.ndarray | None = None

    def record(self, **measured: Any) -> BaselineRecord:
        """This probe set as stored in ``upgrade.baseline`` (with the old system's ``measured``)."""
        old = self.old_queries
        return BaselineRecord(
            probe_ids=self.ids.tolist(),
            probe_labels=self.labels,
            queries_b64=_b64(self.queries),
            dim=int(self.queries.shape[1]) if self.queries.size else 0,
            old_queries_b64=None if old is None else _b64(old),
            old_dim=int(old.shape[1]) if old is not None and old.size else 0,
            **measured,
        )

    def to_json(self) -> dict:
        return self.record().stored()

    @classmethod
    def from_json(cls, d: dict) -> ProbeSet:
        return parse(BaselineRecord, d, "probe set").probe_set()


class BaselineRecord(Record):
    """``upgrade.baseline``: the probe set (ids, labels, the new and old models' embeddings of their
    images) and the old system measured on it once at the start."""

    probe_ids: list[int] = []
    probe_labels: list[str] = []
    queries_b64: str = ""
    dim: int = 0
    old_queries_b64: str | None = None  # absent in upgrades recorded before query plans
    old_dim: int = 0
    old_top1: list[bool] = []
    old_map: float | None = None
    old_top1_rate: float | None = None
    map_k: int | None = None
    running_since: float | None = None  # unix time the scoring run finished: the rate's origin
    scoring_seconds: float | None = None

    def probe_set(self) -> ProbeSet:
        ids = np.asarray(self.probe_ids, dtype=np.int64)
        queries = _unb64(self.queries_b64, len(ids), self.dim)
        old = None if self.old_queries_b64 is None else _unb64(self.old_queries_b64, len(ids), self.old_dim)
        return ProbeSet(ids, list(self.probe_labels), queries, old)

    def has_probes(self) -> bool:
        return bool(self.probe_ids)

    def measures_plans(self) -> bool:
        """Whether query plans can be measured on these probes (they have old queries)."""
        return self.has_probes() and bool(self.old_queries_b64)

    def stored(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def baseline_of(up: Upgrade) -> BaselineRecord | None:
    """The upgrade's stored baseline, or None before the scoring run took it."""
    return parse(BaselineRecord, up.baseline, f"baseline of upgrade {up.id}") if up.baseline else None


def choose_probes(session: Session, model: str, size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """A seeded sample of at most ``size`` labeled items on ``model`` (ids ascending)."""
    rows = item_repo.labeled_items(session, model)
    if not rows or size <= 0:
        return np.zeros(0, np.int64), []
    pick = np.sort(np.random.default_rng(seed).permutation(len(rows))[: min(size, len(rows))])
    return np.asarray([rows[i][0] for i in pick], np.int64), [str(rows[i][1]) for i in pick]


@dataclass
class Gallery:
    """The gallery as SQL holds it at one moment: every live item's active-model vector.

    Models may differ in dimension: :meth:`dense` gives one model's vectors at their rows (zeros
    elsewhere), which is how a plan scores each item in its own space."""

    ids: np.ndarray
    vectors: np.ndarray  # (G, D) when every model has one dimension, else (G, 0): use dense()
    labels: list[str | None]
    models: list[str]
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # model -> its items' vectors, row order

    def __post_init__(self) -> None:
        if not self.parts and len(self.ids):
            on = np.asarray(self.models)
            self.parts = {m: np.asarray(self.vectors)[on == m] for m in dict.fromkeys(self.models)}

    def fraction_on(self, model: str) -> float:
        return float(sum(m == model for m in self.models) / len(self.models)) if self.models else 0.0

    def on(self, model: str) -> np.ndarray:
        return np.asarray(self.models, dtype=object) == model

    def dim(self, model: str) -> int | None:
        part = self.parts.get(model)
        return None if part is None or not len(part) else int(part.shape[1])

    def dense(self, model: str, dim: int) -> np.ndarray:
        out = np.zeros((len(self.ids), dim), np.float32)
        part = self.parts.get(model)
        if part is not None and len(part):
            out[self.on(model)] = part
        return out


def load_gallery(session: Session) -> Gallery:
    ids, models = [], []
    parts: dict[str, list[np.ndarray]] = {}
    for chunk in item_repo.iter_active_vectors(session):
        ids.append(chunk.ids)
        parts.setdefault(chunk.model, []).append(chunk.vectors)
        models.extend([chunk.model] * len(chunk.ids))
    if not ids:
        return Gallery(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), [], [])
    all_ids = np.concatenate(ids)
    label_of = item_repo.labels(session)
    by_model = {m: np.concatenate(v) for m, v in parts.items()}
    dims = {v.shape[1] for v in by_model.values()}
    if len(dims) == 1:
        vectors = np.zeros((len(all_ids), dims.pop()), np.float32)
        on = np.asarray(models, dtype=object)
        for m, v in by_model.items():
            vectors[on == m] = v
    else:
        vectors = np.zeros((len(all_ids), 0), np.float32)
    return Gallery(all_ids, vectors, [label_of.get(int(i)) for i in all_ids], models, by_model)


def label_codes(query_labels: list[str], gallery: Gallery) -> tuple[np.ndarray, np.ndarray]:
    """(gallery codes, query codes): one integer per gallery label, ``UNLABELED`` for an item
    without one, a code below that for a query label no gallery item has (it matches nothing)."""
    codes = {lab: c for c, lab in enumerate(sorted({str(x) for x in gallery.labels if x is not None}))}
    gl = np.asarray([codes[str(x)] if x is not None else UNLABELED for x in gallery.labels], np.int64)
    ql = np.asarray([codes.get(lab, UNLABELED - 1) for lab in query_labels], np.int64)
    return gl, ql


def _coded(query_ids: np.ndarray, query_labels: list[str], gallery: Gallery) -> tuple[np.ndarray, ...]:
    gl, ql = label_codes(query_labels, gallery)
    pos = {int(i): p for p, i in enumerate(gallery.ids.tolist())}
    exclude = np.asarray([pos.get(int(i), -1) for i in query_ids], np.int64)
    return gl, ql, exclude


QUERY_CHUNK = 256


def leave_one_out(
    queries: np.ndarray, query_ids: np.ndarray, query_labels: list[str], gallery: Gallery, k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 correct, AP) per query, each query ranked against the gallery minus itself, one
    embedding against every item (the paper's plan; every model of one dimension)."""
    gl, ql, exclude = _coded(query_ids, query_labels, gallery)
    g = torch.from_numpy(np.array(gallery.vectors, np.float32))
    top1 = np.zeros(len(query_ids), bool)
    ap = np.zeros(len(query_ids), np.float64)
    for start in range(0, len(query_ids), QUERY_CHUNK):
        stop = start + QUERY_CHUNK
        q = torch.from_numpy(np.array(queries[start:stop], np.float32))
        res = evaluate_scores(q @ g.T, ql[start:stop], gl, k=k, exclude=exclude[start:stop])
        top1[start:stop] = res.top1_correct
        ap[start:stop] = res.ap
    return top1, ap


def leave_one_out_plan(
    spec: PlanSpec, old_model: str, new_model: str, probes: ProbeSet, gallery: Gallery, k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Like :func:`leave_one_out`, with each item scored as the plan says: old items in the old
    space, backfilled ones in the new (``models.plans.mixed_scores``, the evaluator's own maths)."""
    if probes.old_queries is None:
        raise ValueError("this upgrade's probes have no old queries (recorded before query plans)")
    gl, ql, exclude = _coded(probes.ids, probes.labels, gallery)
    d_old, d_new = probes.old_queries.shape[1], probes.queries.shape[1]
    g_old = torch.from_numpy(gallery.dense(old_model, d_old))
    g_new = torch.from_numpy(gallery.dense(new_model, d_new))
    moved = torch.from_numpy(gallery.on(new_model).astype(bool))
    top1 = np.zeros(len(probes.ids), bool)
    ap = np.zeros(len(probes.ids), np.float64)
    for start in range(0, len(probes.ids), QUERY_CHUNK):
        stop = start + QUERY_CHUNK
        q_old = torch.from_numpy(np.array(probes.old_queries[start:stop], np.float32))
        q_new = torch.from_numpy(np.array(probes.queries[start:stop], np.float32))
        res = evaluate_scores(
            mixed_scores(spec, q_old, q_new, g_old, g_new, moved), ql[start:stop], gl, k=k, exclude=exclude[start:stop]
        )
        top1[start:stop] = res.top1_correct
        ap[start:stop] = res.ap
    return top1, ap


@dataclass(frozen=True)
class Measurement:
    fraction: float  # share of the gallery on the new model when measured
    nfr: float | None
    map: float | None
    top1: float | None


def take_baseline(session: Session, probes: ProbeSet, old_model: str) -> BaselineRecord:
    """The old system on the probes: old query vector (each probe's stored old vector) against the
    gallery as it is now, before any item moved: what ``upgrade.baseline`` keeps."""
    if len(probes.ids) == 0:
        return probes.record()
    gallery = load_gallery(session)
    k = None if len(gallery.ids) <= FULL_RANKING_MAX else 100
    got_ids, old_q = item_repo.get_vectors(session, old_model, probes.ids.tolist())
    if len(got_ids) != len(probes.ids):
        raise RuntimeError(f"{len(probes.ids) - len(got_ids)} probe items have no {old_model!r} vector")
    top1, ap = leave_one_out(old_q, got_ids, probes.labels, gallery, k)
    return ProbeSet(probes.ids, probes.labels, probes.queries, old_q).record(
        old_top1=top1.tolist(), old_map=float(ap.mean()), old_top1_rate=float(top1.mean()), map_k=k
    )


def measure(
    session: Session,
    baseline: BaselineRecord,
    new_model: str,
    gallery: Gallery | None = None,
    plan: ServingPlan | None = None,
) -> Measurement:
    """NFR@1 and mAP of the probes against the live mixed gallery (as loaded by
    :func:`load_gallery`, now or at a chosen moment), searched as ``plan`` says (None: the new
    model's query against every vector, the paper's plan)."""
    probes = baseline.probe_set()
    if len(probes.ids) == 0 and gallery is None:
        # Nothing to measure: the fraction alone is one COUNT, not a read of every vector.
        return Measurement(item_repo.fraction_on(session, new_model), None, None, None)
    gallery = load_gallery(session) if gallery is None else gallery
    fraction = gallery.fraction_on(new_model)
    if len(probes.ids) == 0 or len(gallery.ids) == 0:
        return Measurement(fraction, None, None, None)
    k = baseline.map_k
    # Without old queries (an upgrade recorded before query plans) only a plan that scores every
    # segment with the new query raw can be measured, as one embedding against every vector.
    if plan is None or (probes.old_queries is None and plan.spec == PlanSpec(PAPER) and gallery.vectors.shape[1]):
        top1, ap = leave_one_out(probes.queries, probes.ids, probes.labels, gallery, k)
    else:
        top1, ap = leave_one_out_plan(plan.spec, plan.old_model, plan.new_model, probes, gallery, k)
    nfr = negative_flip_rate(np.asarray(baseline.old_top1, bool), top1)
    return Measurement(fraction, nfr, float(ap.mean()), float(top1.mean()))
