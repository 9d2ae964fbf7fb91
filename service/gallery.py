"""Adding images to the gallery: the one write path of ``POST /gallery`` and of the bulk loader
(``hotrefresh ingest --bulk``), so both validate, encode and log exactly alike.

A batch is all-or-nothing and ordered: every image is decoded completely first (a bad one
refuses the batch before anything is written), then encoded with the gallery model (and, while
an upgrade can still be rolled back, with the model it started from: invariant 6), the raw
bytes go to the image store, the rows and vectors commit in one transaction with the index-log
entry staged beside them, and the entry is published after the commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import redis as redis_lib
from sqlalchemy.exc import IntegrityError

from service import indexlog
from service.db.session import session_scope
from service.errors import BadRequest, Conflict
from service.ids import id_problem
from service.images import decode_image, pixel_batch
from service.imagestore import ImageStore
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
    for i, u in enumerate(uploads):
        decode_image(u.data, f"{what} {i} (external_id {u.external_id!r})", settings.max_image_pixels)
    # A short read transaction (SQLite takes its write lock at BEGIN, so no encoding in here).
    with session_scope(settings.sqlalchemy_url) as s:
        state = catalog.get_serving_state(s)
        gallery_model = state.gallery_model
        if gallery_model is None:
            raise Conflict("no model is registered yet; POST /models first")
        taken = item_repo.existing_external_ids(s, ext_ids)
        if taken:
            raise Conflict(f"external_id already in the gallery: {sorted(taken)[:10]}")
        upgrade = upgrades.active_upgrade(s)
        models = [gallery_model]
        if upgrade is not None and upgrade.from_model != gallery_model:
            models.append(upgrade.from_model)
        encs = {m: encoders.get(s, m) for m in models}
    blobs = [u.data for u in uploads]
    limit = settings.max_image_pixels
    vectors: dict[str, np.ndarray] = {m: e.embed_tensor(pixel_batch(blobs, e.meta, limit)) for m, e in encs.items()}
    keys = [store.put(data) for data in blobs]
    new = [
        item_repo.NewItem(
            external_id=u.external_id, label=u.label, image_key=key, vectors={m: v[i] for m, v in vectors.items()}
        )
        for i, (u, key) in enumerate(zip(uploads, keys, strict=True))
    ]
    try:
        with session_scope(settings.sqlalchemy_url) as s:
            rows = item_repo.add_items(s, new, active_model=gallery_model)
            added = [Added(r.external_id, r.active_model, r.id) for r in rows]
            staged = indexlog.stage(s, "add", gallery_model, [a.id for a in added])
    except IntegrityError:
        # Another writer inserted one of these ids between our check and our commit.
        raise Conflict("external_id already in the gallery (concurrent insert)") from None
    indexlog.publish(redis, settings, staged)
    return added
