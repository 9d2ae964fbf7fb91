"""The search path's own work, whatever the index backend: encode the query with each model the
serving plan needs, and turn the embeddings into the index's query plan.

Runs on request threads beside the follower and takes no lock: it reads the index's view as it
is at that moment (the index has its own readers-writer lock).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from service.api.serving.port import IndexView
from service.db.session import read_scope
from service.errors import Conflict, Unavailable
from service.images import decode_slot, pixels_for
from service.index import QueryPlan
from service.registry import EncoderCache
from service.settings import Settings
from service.upgrade import plans

Embeddings = dict[str, np.ndarray]  # model -> (m, D) query embeddings

if TYPE_CHECKING:
    from models.checkpoint import LoadedModel


class NotReady(Unavailable):
    """The replica has not finished loading from SQL."""


class NoModel(Conflict):
    """No model is registered yet, so nothing can be encoded."""


def encoder(encoders: EncoderCache, url: str, model: str) -> LoadedModel:
    cached = encoders.peek(model)
    if cached is not None:
        return cached
    with read_scope(url) as s:
        return encoders.get(s, model)


def encode(encoders: EncoderCache, view: IndexView, data: bytes, settings: Settings) -> tuple[str, Embeddings]:
    """The query model's name and the embeddings the serving plan needs for one image's bytes:
    the bytes validated and decoded once (``service.images.pixels_for``: the same 4xx as an
    upload's, within ``/search``'s own pixel budget and a decode slot), then one encoder call
    per model (during an upgrade under ``dual``, the old and the new encoder)."""
    model, plan = view.query_model, view.plan
    if model is None:
        raise NoModel("no model is registered yet; POST /models first")
    needed = plan.query_models() if plan is not None else [model]
    encs = {m: encoder(encoders, settings.sqlalchemy_url, m) for m in needed}
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


def plan_for(view: IndexView, embeddings: Embeddings, query_model: str) -> QueryPlan | None:
    """The index's plan for these embeddings: the serving plan over the segments present, else the
    query model's embedding against every segment. None when there is nothing to search."""
    present, plan = view.dims, view.plan
    if not present:
        return None
    if plan is None or plan.new_model not in embeddings:
        # No plan: the query model against every segment of its own dimension (after a rollback
        # an emptied segment of the new model's dimension may linger until commit or reload).
        q = embeddings[query_model]
        same = [m for m in sorted(present) if present[m] == q.shape[1]]
        return QueryPlan.single(q, same) if same else None
    return plans.query_plan(plan, embeddings, set(present))
