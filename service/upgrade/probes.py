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
from dataclasses import dataclass

import numpy as np
import torch
from sqlalchemy.orm import Session

from models.metrics import evaluate_scores, negative_flip_rate
from service.repositories import items as item_repo

FULL_RANKING_MAX = 20_000  # larger galleries use mAP@100, as the paper does for large sets
UNLABELED = -1


@dataclass
class ProbeSet:
    ids: np.ndarray  # (Q,) int64 gallery item ids
    labels: list[str]
    queries: np.ndarray  # (Q, D) float32: the new model's embedding of each probe's image

    def to_json(self) -> dict:
        q = np.ascontiguousarray(self.queries, dtype="<f4")
        return {"probe_ids": self.ids.tolist(), "probe_labels": self.labels,
                "queries_b64": base64.b64encode(q.tobytes()).decode(),
                "dim": int(q.shape[1]) if q.size else 0}

    @classmethod
    def from_json(cls, d: dict) -> ProbeSet:
        ids = np.asarray(d.get("probe_ids", []), dtype=np.int64)
        dim = int(d.get("dim", 0))
        raw = base64.b64decode(d.get("queries_b64", ""))
        queries = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(len(ids), dim) if dim else (
            np.zeros((len(ids), 0), np.float32))
        return cls(ids, list(d.get("probe_labels", [])), queries)


def choose_probes(session: Session, model: str, size: int, seed: int) -> tuple[np.ndarray, list[str]]:
    """A seeded sample of at most ``size`` labeled items on ``model`` (ids ascending)."""
    rows = item_repo.labeled_items(session, model)
    if not rows or size <= 0:
        return np.zeros(0, np.int64), []
    pick = np.sort(np.random.default_rng(seed).permutation(len(rows))[: min(size, len(rows))])
    return np.asarray([rows[i][0] for i in pick], np.int64), [str(rows[i][1]) for i in pick]


@dataclass
class Gallery:
    """The gallery as SQL holds it at one moment: every live item's active-model vector."""

    ids: np.ndarray
    vectors: np.ndarray
    labels: list[str | None]
    models: list[str]

    def fraction_on(self, model: str) -> float:
        return float(sum(m == model for m in self.models) / len(self.models)) if self.models else 0.0


def load_gallery(session: Session) -> Gallery:
    ids, vecs, models = [], [], []
    for chunk in item_repo.iter_active_vectors(session):
        ids.append(chunk.ids)
        vecs.append(chunk.vectors)
        models.extend([chunk.model] * len(chunk.ids))
    if not ids:
        return Gallery(np.zeros(0, np.int64), np.zeros((0, 0), np.float32), [], [])
    all_ids = np.concatenate(ids)
    label_of = item_repo.labels(session)
    return Gallery(all_ids, np.concatenate(vecs), [label_of.get(int(i)) for i in all_ids], models)


def leave_one_out(
    queries: np.ndarray, query_ids: np.ndarray, query_labels: list[str], gallery: Gallery, k: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """(top-1 correct, AP) per query, each query ranked against the gallery minus itself."""
    codes = {lab: c for c, lab in enumerate(sorted({str(x) for x in gallery.labels if x is not None}))}
    gl = np.asarray([codes[str(x)] if x is not None else UNLABELED for x in gallery.labels], np.int64)
    ql = np.asarray([codes.get(lab, UNLABELED - 1) for lab in query_labels], np.int64)
    pos = {int(i): p for p, i in enumerate(gallery.ids.tolist())}
    exclude = np.asarray([pos.get(int(i), -1) for i in query_ids], np.int64)
    g = torch.from_numpy(np.array(gallery.vectors, np.float32))
    top1 = np.zeros(len(query_ids), bool)
    ap = np.zeros(len(query_ids), np.float64)
    for start in range(0, len(query_ids), 256):
        stop = start + 256
        q = torch.from_numpy(np.array(queries[start:stop], np.float32))
        res = evaluate_scores(q @ g.T, ql[start:stop], gl, k=k, exclude=exclude[start:stop])
        top1[start:stop] = res.top1_correct
        ap[start:stop] = res.ap
    return top1, ap


@dataclass(frozen=True)
class Measurement:
    fraction: float  # share of the gallery on the new model when measured
    nfr: float | None
    map: float | None
    top1: float | None


def take_baseline(session: Session, probes: ProbeSet, old_model: str) -> dict:
    """The old system on the probes: old query vector (each probe's stored old vector) against the
    gallery as it is now, before any item moved. Returns the JSON kept in ``upgrade.baseline``."""
    base = probes.to_json()
    if len(probes.ids) == 0:
        return {**base, "old_top1": [], "old_map": None, "old_top1_rate": None, "map_k": None}
    gallery = load_gallery(session)
    k = None if len(gallery.ids) <= FULL_RANKING_MAX else 100
    got_ids, old_q = item_repo.get_vectors(session, old_model, probes.ids.tolist())
    if len(got_ids) != len(probes.ids):
        raise RuntimeError(f"{len(probes.ids) - len(got_ids)} probe items have no {old_model!r} vector")
    top1, ap = leave_one_out(old_q, got_ids, probes.labels, gallery, k)
    return {**base, "old_top1": top1.tolist(), "old_map": float(ap.mean()),
            "old_top1_rate": float(top1.mean()), "map_k": k}


def measure(session: Session, baseline: dict, new_model: str, gallery: Gallery | None = None) -> Measurement:
    """NFR@1 and mAP of the new-model probe queries against the live mixed gallery (as loaded by
    :func:`load_gallery`, now or at a chosen moment)."""
    probes = ProbeSet.from_json(baseline)
    if len(probes.ids) == 0 and gallery is None:
        # Nothing to measure: the fraction alone is one COUNT, not a read of every vector.
        return Measurement(item_repo.fraction_on(session, new_model), None, None, None)
    gallery = load_gallery(session) if gallery is None else gallery
    fraction = gallery.fraction_on(new_model)
    if len(probes.ids) == 0 or len(gallery.ids) == 0:
        return Measurement(fraction, None, None, None)
    top1, ap = leave_one_out(probes.queries, probes.ids, probes.labels, gallery, baseline.get("map_k"))
    nfr = negative_flip_rate(np.asarray(baseline["old_top1"], bool), top1)
    return Measurement(fraction, nfr, float(ap.mean()), float(top1.mean()))
