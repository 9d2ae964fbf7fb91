"""The search path of a replica: encode the query with the serving model, search the replica.

Runs on request threads beside the follower; it reads the index and the external-id map as they
are at that moment (the index has its own readers-writer lock) and takes no replica lock.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from service.api.serving.state import ReplicaState
from service.db.session import read_scope
from service.errors import Conflict, Unavailable
from service.index import QueryPlan

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


def encode_query(replica: ReplicaState, image: Image.Image) -> tuple[str, np.ndarray]:
    require_ready(replica)
    model = replica.query_model
    if model is None:
        raise NoModel("no model is registered yet; POST /models first")
    return model, encoder(replica, model).embed_images([image])


def search_vector(replica: ReplicaState, query: np.ndarray, k: int) -> list[tuple[str, float, str]]:
    """(external_id, score, model) of the top ``k``, with the paper's plan over every segment."""
    index = replica.index
    if not index.counts():
        return []
    hits = index.search(QueryPlan.single(query), k)[0]
    external = replica.external_ids
    out = []
    for hit in hits:
        ext = external.get(int(hit.id))
        if ext is not None:  # deleted between the search and this lookup
            out.append((ext, float(hit.score), hit.model))
    return out
