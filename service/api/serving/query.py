"""The search path of a replica: encode the query with the serving model, search the replica.

Runs on request threads beside the follower; it reads the index and the external-id map as they
are at that moment (the index has its own readers-writer lock) and takes no replica lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from service.api.serving.state import ReplicaState
from service.db.session import read_scope
from service.errors import Conflict, Unavailable
from service.images import decode_slot, pixels_for
from service.index import QueryPlan
from service.settings import Settings
from service.upgrade import plans

Embeddings = dict[str, np.ndarray]  # model -> (m, D) query embeddings

if TYPE_CHECKING:
    from models.checkpoint import LoadedModel


class NotReady(Unavailable):
    """The replica has not finished loading from SQL."""


class NoModel(Conflict):
    """No model is registered yet, so nothing can be encoded."""


def require_ready(replica: ReplicaState) -> None:
    if not replica.ready.is_set():
        raise NotReady("the index is still loading")


def encoder(replica: ReplicaState, model: str) -> LoadedModel:
    cached = replica.encoders.peek(model)
    if cached is not None:
        return cached
    with read_scope(replica.url) as s:
        return replica.encoders.get(s, model)


def encode_query(replica: ReplicaState, data: bytes, settings: Settings) -> tuple[str, Embeddings]:
    """The query model's name and the embeddings the serving plan needs for one image's bytes:
    the bytes validated and decoded once (``service.images.pixels_for``: the same 4xx as an
    upload's, within ``/search``'s own pixel budget and a decode slot), then one encoder call
    per model (during an upgrade under ``dual``, the old and the new encoder)."""
    require_ready(replica)
    model, plan = replica.query_model, replica.plan
    if model is None:
        raise NoModel("no model is registered yet; POST /models first")
    needed = plan.query_models() if plan is not None else [model]
    encs = {m: encoder(replica, m) for m in needed}
    with decode_slot(settings):
        pixels = pixels_for(
            data,
            {m: e.meta for m, e in encs.items()},
            "query image",
            settings.max_image_pixels,
            max_decoded=settings.max_query_pixels,
            limit_name="HOTREFRESH_MAX_QUERY_PIXELS",
        )
    return model, {m: e.embed_tensor(pixels[m][None]) for m, e in encs.items()}


def plan_for(replica: ReplicaState, embeddings: Embeddings, query_model: str) -> QueryPlan | None:
    """The index's plan for these embeddings: the serving plan over the segments present, else the
    query model's embedding against every segment. None when there is nothing to search."""
    index, plan = replica.index, replica.plan
    present = {m for m, n in index.counts().items() if n}
    if not present:
        return None
    if plan is None or plan.new_model not in embeddings:
        # No plan: the query model against every segment of its own dimension (after a rollback
        # an emptied segment of the new model's dimension may linger until commit or reload).
        q = embeddings[query_model]
        same = [m for m in sorted(present) if index.dim(m) == q.shape[1]]
        return QueryPlan.single(q, same) if same else None
    return plans.query_plan(plan, embeddings, present)


def search_vector(
    replica: ReplicaState, embeddings: Embeddings | np.ndarray, k: int, query_model: str | None = None
) -> list[tuple[str, float, str]]:
    """(external_id, score, model) of the top ``k`` for the first query, merged over segments as
    the serving plan says. A bare array is the query model's embedding (no plan)."""
    model = query_model or replica.query_model or ""
    if isinstance(embeddings, np.ndarray):
        embeddings = {model: embeddings}
    query_plan = plan_for(replica, embeddings, model)
    if query_plan is None:
        return []
    hits = replica.index.search(query_plan, k)[0]
    external = replica.external_ids
    out = []
    for hit in hits:
        ext = external.get(int(hit.id))
        if ext is not None:  # deleted between the search and this lookup
            out.append((ext, float(hit.score), hit.model))
    return out
