"""A stand-in for every writer of the system (API, backfill workers, upgrade control) in the
replica tests: commits to SQL first, then appends to the index log, as docs/design.md requires."""

from __future__ import annotations

import numpy as np
import redis as redis_lib
from sqlalchemy import delete, select, update

from service import indexlog
from service.api.serving import Serving
from service.api.serving.replica import Replica
from service.db.schema import Embedding, GalleryItem
from service.db.session import session_scope
from service.repositories import catalog
from service.repositories import items as item_repo
from service.settings import Settings

D = 32  # the dimension of tests.utils.checkpoints.make_tiny_checkpoint


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Writer:
    """Plays the API and the backfill workers: commit to SQL, then append to the log."""

    def __init__(self, settings: Settings, r: redis_lib.Redis, seed: int = 0) -> None:
        self.settings, self.r, self.url = settings, r, settings.sqlalchemy_url
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def add(self, n: int, model: str, also: str | None = None) -> list[int]:
        items = []
        for _ in range(n):
            self.n += 1
            vecs = {model: unit(self.rng, 1)[0]}
            if also:
                vecs[also] = unit(self.rng, 1)[0]
            items.append(item_repo.NewItem(f"e{self.n}", None, "0" * 64, vecs))
        with session_scope(self.url) as s:
            ids = [row.id for row in item_repo.add_items(s, items, active_model=model)]
        indexlog.append(self.r, self.settings, "add", model, ids)
        return ids

    def move(self, ids: list[int], model: str) -> None:
        with session_scope(self.url) as s:
            for i, v in zip(ids, unit(self.rng, len(ids)), strict=True):
                item_repo.upsert_embedding(s, i, model, v)
            s.execute(update(GalleryItem).where(GalleryItem.id.in_(ids)).values(active_model=model))
        indexlog.append(self.r, self.settings, "move", model, ids)

    def delete(self, ids: list[int]) -> None:
        with session_scope(self.url) as s:
            for item in item_repo.get_items_by_ids(s, ids):
                item_repo.delete_item(s, item)
        indexlog.append(self.r, self.settings, "delete", None, ids)

    def switch(self, model: str) -> None:
        with session_scope(self.url) as s:
            catalog.set_serving_state(s, gallery_model=model, query_model=model)
        indexlog.append(self.r, self.settings, "switch", model)

    def rollback(self, to_model: str) -> None:
        with session_scope(self.url) as s:
            have_old = select(Embedding.item_id).where(Embedding.model == to_model)
            s.execute(update(GalleryItem).where(GalleryItem.id.in_(have_old)).values(active_model=to_model))
            catalog.set_serving_state(s, gallery_model=to_model, query_model=to_model)
        indexlog.append(self.r, self.settings, "rollback", to_model)

    def commit(self, old: str) -> None:
        with session_scope(self.url) as s:
            s.execute(delete(Embedding).where(Embedding.model == old))
        indexlog.append(self.r, self.settings, "commit", old)


def sql_truth(settings: Settings) -> tuple[dict[int, str], str | None]:
    with session_scope(settings.sqlalchemy_url) as s:
        items = {int(i): m for i, m in s.execute(select(GalleryItem.id, GalleryItem.active_model))}
        return items, catalog.get_serving_state(s).query_model


def replica_state(serving: Serving | Replica) -> tuple[dict[int, str], str | None]:
    """What a replica serves, in the shape of :func:`sql_truth`: the model per item, the query model."""
    return serving.items(), serving.status().query_model


def catch_up(*replicas: Serving | Replica) -> None:
    """Apply everything the log holds, without waiting for more."""
    for rep in replicas:
        while rep.poll(block_ms=None) != 0:
            pass
