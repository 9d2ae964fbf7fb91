"""Scoring an upgrade: the old vector of every item still on the old model goes through the new
model's classifier, ``models.uncertainty`` turns the softmax into a priority ("the poor
first"), the priorities land in SQL (``backfill_tasks``) and then in the Redis queue; the probe
set and the old system's baseline are taken; the upgrade moves ``scoring -> running``.

Safe to run twice (a redelivered task): everything is replaced, not appended, and only the
``scoring -> running`` transition (one conditional UPDATE) decides which run wins.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import redis as redis_lib
from sqlalchemy.orm import Session

from models.checkpoint import LoadedModel
from models.uncertainty import get_ordering, score_uncertainty
from service.db.schema import Upgrade
from service.db.session import read_scope, session_scope
from service.imagestore import ImageStore
from service.metrics import BACKFILL_PROGRESS, remove_upgrade
from service.queue import BackfillQueue
from service.repositories import items as item_repo
from service.repositories import upgrades
from service.settings import Settings
from service.states import SCORING, TransitionError
from service.upgrade import checkpoints, chooser, probes
from service.upgrade.images import load_pixels
from service.upgrade.records import Checkpoint

log = logging.getLogger(__name__)

SCORE_CHUNK = 65_536


def compute_priorities(session: Session, upgrade: Upgrade, new_model: LoadedModel) -> tuple[np.ndarray, np.ndarray]:
    # an order without the classifier never uses it, and a model registered without one has none
    dim = new_model.meta.embedding_dim
    w, b = (
        new_model.classifier_weights()
        if get_ordering(upgrade.strategy).uses_classifier
        else (np.zeros((0, dim), np.float32), np.zeros(0, np.float32))
    )
    all_ids, all_prio = [np.zeros(0, np.int64)], [np.zeros(0, np.float32)]
    chunks = (c for c in item_repo.iter_active_vectors(session, chunk=SCORE_CHUNK) if c.model == upgrade.from_model)
    for n, chunk in enumerate(chunks):
        ids, vecs = chunk.ids, np.array(chunk.vectors)  # writable, for torch
        seed = int(upgrade.id) * 1_000_003 + n  # a drawn order differs per upgrade, reproducibly
        all_ids.append(ids)
        all_prio.append(score_uncertainty(vecs, w, b, upgrade.strategy, seed=seed))
    return np.concatenate(all_ids), np.concatenate(all_prio)


def build_probes(
    session: Session, upgrade: Upgrade, new_model: LoadedModel, images: ImageStore, size: int, max_pixels: int
) -> probes.ProbeSet:
    ids, labels = probes.choose_probes(session, upgrade.from_model, size, seed=int(upgrade.id))
    keys = item_repo.image_keys(session, ids.tolist())
    pixels, ok, _ = load_pixels(images, [keys[int(i)] for i in ids], new_model.meta, max_pixels)
    # a probe whose image is unreadable is dropped
    queries = new_model.embed_tensor(pixels) if ok else np.zeros((0, new_model.meta.embedding_dim), np.float32)
    return probes.ProbeSet(ids[ok], [labels[k] for k in ok], queries)


def run_scoring(
    settings: Settings, redis: redis_lib.Redis, upgrade_id: int, new_model: LoadedModel, images: ImageStore
) -> bool:
    """Score, fill the queue, take the baseline; True when this run moved the upgrade to running."""
    url = settings.sqlalchemy_url
    BACKFILL_PROGRESS.labels(str(upgrade_id)).set(0.0)  # nothing moved: GET /upgrade says null
    # Read-only: scoring a large gallery takes a while, and must not hold SQLite's write lock
    # (API inserts and deletes) for that long.
    with read_scope(url) as s:
        up = upgrades.get_upgrade(s, upgrade_id)
        if up is None or up.state != SCORING:
            return False
        t0 = time.perf_counter()
        ids, prio = compute_priorities(s, up, new_model)
        if up.vector_only:  # no image is read, so no probe has a new-model query: nothing is measured
            dim = new_model.meta.embedding_dim
            probe_set = probes.ProbeSet(np.zeros(0, np.int64), [], np.zeros((0, dim), np.float32))
        else:
            probe_set = build_probes(s, up, new_model, images, settings.probe_size, settings.max_image_pixels)
        baseline = probes.take_baseline(s, probe_set, up.from_model)
    to_model = up.to_model
    with session_scope(url) as s:
        ids, prio = upgrades.replace_tasks(s, upgrade_id, ids, prio)
        upgrades.set_total(s, upgrade_id, len(ids))
    queue = BackfillQueue(redis, settings, upgrade_id)
    if up.vector_only:  # a vector-only upgrade's drains lease nothing: they map (mapping.py)
        queue.clear()
    else:
        queue.start(list(zip(ids.tolist(), prio.tolist(), strict=True)))
    extra: dict = {}
    with read_scope(url) as s:
        current = checkpoints.serving_plan_of(s, up)
        if current is not None and baseline.measures_plans():
            # Fit the start plan (each space's calibration) and measure it: what users get now.
            up.baseline = baseline.stored()  # the detached row, read by the chooser only
            choice = chooser.choose_at_cut(s, settings, up, current, probes.load_gallery(s), step=0)
            first, plan_json = choice.measurement, choice.plan.to_json()
            extra = {
                "plan": choice.plan.name,
                "candidates": choice.candidates,
                "nfr_bound": choice.nfr_bound,
                "reason": choice.reason,
            }
        else:
            first, plan_json = probes.measure(s, baseline, to_model), None
    if plan_json is not None:
        checkpoints.serve(settings, redis, upgrade_id, plan_json)
    baseline = baseline.model_copy(update={"running_since": time.time(), "scoring_seconds": time.perf_counter() - t0})
    checkpoint = Checkpoint(
        step=0,
        fraction=first.fraction,
        progress=0.0,
        nfr=first.nfr,
        map=first.map,
        top1=first.top1,
        at=time.time(),
        **extra,
    )
    try:
        with session_scope(url) as s:
            upgrades.transition(
                s,
                upgrade_id,
                "scored",
                baseline=baseline.stored(),
                checkpoints=[checkpoint.stored()],
                nfr=first.nfr,
                map=first.map,
            )
    except TransitionError:
        queue.clear()  # rolled back or cancelled while scoring
        remove_upgrade(upgrade_id)
        return False
    checkpoints.set_live_gauges(upgrade_id, checkpoint, checkpoints.alert_bound(settings, up, checkpoint))
    log.info(
        "upgrade %s scored: %d items, %d probes, %.1fs",
        upgrade_id,
        len(ids),
        len(probe_set.ids),
        baseline.scoring_seconds,
    )
    return True
