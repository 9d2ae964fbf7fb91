"""A stand-in for every writer of the system (API, backfill workers, upgrade control) in the
replica tests: each change is one unit of work (``service.indexport``), as the real writers' are:
SQL commits with the change staged, then it is published to the index log."""

from __future__ import annotations

import numpy as np
import redis as redis_lib
from sqlalchemy import delete, select, update

from service.api.serving import Serving
from service.api.serving.replica import Replica
from service.db.schema import Embedding, GalleryItem
from service.db.session import session_scope
from service.indexport import Change, unit_of_work
from service.repositories import catalog
from service.repositories import items as item_repo
from service.settings import Settings

D = 32  # the dimension of tests.utils.checkpoints.make_tiny_checkpoint


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, D)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


class Writer:
    """Plays the API and the backfill workers: one unit of work per change."""

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
        with unit_of_work(self.settings, self.r) as uow:
            s = uow.session
            ids = [row.id for row in item_repo.add_items(s, items, active_model=model)]
            uow.record(Change.add(model, ids))
        return ids

    def move(self, ids: list[int], model: str) -> None:
        with unit_of_work(self.settings, self.r) as uow:
            s = uow.session
            for i, v in zip(ids, unit(self.rng, len(ids)), strict=True):
                item_repo.upsert_embedding(s, i, model, v)
            s.execute(update(GalleryItem).where(GalleryItem.id.in_(ids)).values(active_model=model))
            uow.record(Change.move(model, ids))

    def delete(self, ids: list[int]) -> None:
        with unit_of_work(self.settings, self.r) as uow:
            s = uow.session
            for item in item_repo.get_items_by_ids(s, ids):
                item_repo.delete_item(s, item)
            uow.record(Change.delete(ids))

    def switch(self, model: str) -> None:
        with unit_of_work(self.settings, self.r) as uow:
            s = uow.session
            catalog.set_serving_state(s, gallery_model=model, query_model=model)
            uow.record(Change.switch(model))

    def rollback(self, to_model: str) -> None:
        with unit_of_work(self.settings, self.r) as uow:
            s = uow.session
            have_old = select(Embedding.item_id).where(Embedding.model == to_model)
            s.execute(update(GalleryItem).where(GalleryItem.id.in_(have_old)).values(active_model=to_model))
            catalog.set_serving_state(s, gallery_model=to_model, query_model=to_model)
            uow.record(Change.rollback(to_model))

    def commit(self, old: str) -> None:
        with unit_of_work(self.settings, self.r) as uow:
            s = uow.session
            s.execute(delete(Embedding).where(Embedding.model == old))
            uow.record(Change.commit(old))


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
