"""Adding images to the gallery: the one write path of ``POST /gallery`` and of the bulk loader
(``hotrefresh ingest --bulk``), so both validate, encode and log exactly alike.

A batch is all-or-nothing and ordered: every image is decoded completely first (a bad one
refuses the batch before anything is written), then encoded with the gallery model (and, while
an upgrade can still be rolled back, with the model it started from: invariant 6), the raw
bytes go to the image store, and the rows and vectors commit in one unit of work whose index
change is published after the commit (``service.indexport``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis as redis_lib
from sqlalchemy.exc import IntegrityError

from service.db.session import read_scope
from service.errors import BadRequest, Conflict
from service.ids import id_problem
from service.images import decode_slot, pixels_for
from service.imagestore import ImageStore
from service.indexport import Change, unit_of_work
from service.registry import EncoderCache
from service.repositories import catalog, upgrades
from service.repositories import items as item_repo
from service.settings import Settings


@dataclass(frozen=True)
class Upload:
    external_id: str
    label: str | None
    data: bytes


@dataclass(frozen=True)
class Added:
    external_id: str
    model: str
    id: int


def check_ids(external_ids: Sequence[str]) -> None:
    """The request-level checks: ids not blank, text a user can type in NFC (``service.ids``),
    not repeated within the batch."""
    for ext in external_ids:
        if not ext.strip():
            raise BadRequest(f"external_id must not be blank: {ext!r}")
        problem = id_problem(ext)
        if problem is not None:
            raise BadRequest(f"external_id {ext!r} {problem}")
    repeated = [e for e, c in Counter(external_ids).items() if c > 1]
    if repeated:
        raise Conflict(f"external_id repeated within the request: {repeated[:10]}")


def add_batch(
    settings: Settings,
    redis: redis_lib.Redis,
    store: ImageStore,
    encoders: EncoderCache,
    uploads: Sequence[Upload],
    *,
    what: str = "image",
) -> list[Added]:
    """Validate, encode, store, commit and log one batch; returns the rows added, in order.
    Raises BadRequest / TooLarge / Conflict (nothing written) as ``POST /gallery`` answers them."""
    ext_ids = [u.external_id for u in uploads]
    check_ids(ext_ids)
    # A read-only transaction: it never holds SQLite's write lock, so loading an encoder the first
    # time (seconds) holds back no writer.
    with read_scope(settings.sqlalchemy_url) as s:
        state = catalog.peek_serving_state(s)
        gallery_model = state.gallery_model if state is not None else None
        if gallery_model is None:
            raise Conflict("no model is registered yet; POST /models first")
        taken = item_repo.existing_external_ids(s, ext_ids)
        upgrade = upgrades.active_upgrade(s)
        models = [gallery_model]
        if upgrade is not None and upgrade.from_model != gallery_model:
            models.append(upgrade.from_model)
        encs = {m: encoders.get(s, m) for m in models}
    # Every image decoded once, completely, before anything is written: a bad one refuses the
    # batch (422/413), and that one decode gives every model its pixels.
    metas = {m: e.meta for m, e in encs.items()}
    limit = settings.max_image_pixels
    with decode_slot(settings):
        decoded = [
            pixels_for(u.data, metas, f"{what} {i} (external_id {u.external_id!r})", limit)
            for i, u in enumerate(uploads)
        ]
    if taken:
        raise Conflict(f"external_id already in the gallery: {sorted(taken)[:10]}")
    vectors: dict[str, np.ndarray] = {m: e.embed_tensor(np.stack([d[m] for d in decoded])) for m, e in encs.items()}
    blobs = [u.data for u in uploads]
    keys = store.put_many(blobs)
    new = [
        item_repo.NewItem(
            external_id=u.external_id, label=u.label, image_key=key, vectors={m: v[i] for m, v in vectors.items()}
        )
        for i, (u, key) in enumerate(zip(uploads, keys, strict=True))
    ]
    try:
        with unit_of_work(settings, redis) as uow:
            rows = item_repo.add_items(uow.session, new, active_model=gallery_model)
            added = [Added(r.external_id, r.active_model, r.id) for r in rows]
            uow.record(Change.add(gallery_model, [a.id for a in added]))
    except IntegrityError:
        # Another writer inserted one of these ids between our check and our commit.
        raise Conflict("external_id already in the gallery (concurrent insert)") from None
    return added
