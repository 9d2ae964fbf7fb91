"""Retrieval metrics: AP / mAP (full ranking or @k) and the negative flip rate (paper Eq. 12).

Rankings are computed with torch over chunks of queries, so a (2,000 x 8,000) evaluation is a
handful of sorts, not a Python loop per query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def average_precision(ranked_relevant: np.ndarray, k: int | None = None, n_relevant: int | None = None) -> float:
    """AP of one ranked list of 0/1 relevances; ``@k`` divides by min(#relevant, k).

    ``n_relevant`` is the number of relevant items in the whole gallery (needed when the list is
    truncated); by default the list is assumed complete.
    """
    rel = np.asarray(ranked_relevant, dtype=bool)
    total = int(rel.sum()) if n_relevant is None else int(n_relevant)
    if k is not None:
        rel = rel[:k]
        total = min(total, k)
    if total == 0:
        return 0.0
    hits = np.cumsum(rel)
    precision = hits / np.arange(1, len(rel) + 1)
    return float((precision * rel).sum() / total)


@dataclass
class RetrievalResult:
    map: float
    top1: float
    ap: np.ndarray  # per query
    top1_correct: np.ndarray  # bool per query


def _scored(
    scores: np.ndarray | torch.Tensor,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    exclude: np.ndarray | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Scores and labels as tensors on one device, checked; each query's ``exclude`` column ranked
    last (-inf): what ``evaluate_scores`` and ``top1_correct`` share."""
    s = torch.as_tensor(scores)
    ql = torch.as_tensor(np.asarray(query_labels), device=s.device)
    gl = torch.as_tensor(np.asarray(gallery_labels), device=s.device)
    if s.ndim != 2 or s.shape != (len(ql), len(gl)):
        raise ValueError(f"scores shaped {tuple(s.shape)} do not match {len(ql)} queries x {len(gl)} gallery")
    ex = None
    if exclude is not None:
        ex = torch.as_tensor(np.asarray(exclude, dtype=np.int64), device=s.device)
        if ex.shape != (len(ql),) or bool((ex >= len(gl)).any()):
            raise ValueError("exclude must hold one gallery column (or -1) per query")
        # Ranked last (-inf), then not counted as relevant: as if the column were absent.
        s = s.clone().float()
        rows = torch.nonzero(ex >= 0).flatten()
        s[rows, ex[rows]] = float("-inf")
    return s, ql, gl, ex


def evaluate_scores(
    scores: np.ndarray | torch.Tensor,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    k: int | None = None,
    chunk: int = 512,
    exclude: np.ndarray | None = None,
) -> RetrievalResult:
    """mAP (full ranking, or @k) and top-1 accuracy of a (Q, G) similarity matrix (higher = closer).

    ``exclude[q]`` (a gallery column, or -1) leaves that column out of query q's ranking: the
    leave-one-out protocol when the queries are gallery items themselves (the service's probes).
    """
    s, ql, gl, ex = _scored(scores, query_labels, gallery_labels, exclude)
    aps, top1 = [], []
    for i in range(0, s.shape[0], chunk):
        sc = s[i : i + chunk]
        kk = sc.shape[1] if k is None else min(k, sc.shape[1])
        if kk < sc.shape[1]:
            idx = sc.topk(kk, dim=1, sorted=True).indices
        else:
            idx = sc.argsort(dim=1, descending=True, stable=True)
        rel = gl[idx] == ql[i : i + chunk, None]
        n_rel = (gl[None, :] == ql[i : i + chunk, None]).sum(1).float()
        if ex is not None:
            exc = ex[i : i + chunk]
            rel &= idx != exc[:, None]
            n_rel -= ((exc >= 0) & (gl[exc.clamp(min=0)] == ql[i : i + chunk])).float()
        denom = n_rel if k is None else n_rel.clamp(max=k)
        relf = rel.float()
        prec = relf.cumsum(1) / torch.arange(1, kk + 1, dtype=torch.float32, device=s.device)
        ap = (prec * relf).sum(1) / denom.clamp(min=1)
        aps.append(torch.where(denom > 0, ap, torch.zeros_like(ap)))
        top1.append(rel[:, 0])
    ap_all = torch.cat(aps).cpu().numpy().astype(np.float64)
    t1 = torch.cat(top1).cpu().numpy()
    return RetrievalResult(float(ap_all.mean()), float(t1.mean()), ap_all, t1)


def top1_correct(
    scores: np.ndarray | torch.Tensor,
    query_labels: np.ndarray,
    gallery_labels: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
) -> np.ndarray:
    """Per query, whether the top-ranked gallery item shares its label: ``evaluate_scores``'s
    ``top1_correct`` (the same tie rule: the first column among equal scores) from one argmax per
    row instead of a full ranking, for callers that need only NFR@1 (the chooser's estimate)."""
    s, ql, gl, _ = _scored(scores, query_labels, gallery_labels, exclude)
    if s.shape[1] == 0:
        return np.zeros(len(ql), bool)
    return (gl[s.argmax(dim=1)] == ql).cpu().numpy()


def negative_flip_rate(old_top1_correct: np.ndarray, new_top1_correct: np.ndarray) -> float | None:
    """Eq. 12: |Q+ ∩ Q-| / |Q+|; None when the old system got no query right (NFR undefined)."""
    old = np.asarray(old_top1_correct, dtype=bool)
    new = np.asarray(new_top1_correct, dtype=bool)
    if old.shape != new.shape:
        raise ValueError(f"flag arrays differ in shape: {old.shape} vs {new.shape}")
    n_pos = int(old.sum())
    if n_pos == 0:
        return None
    return float((old & ~new).sum() / n_pos)
