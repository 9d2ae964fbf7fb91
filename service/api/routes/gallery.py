"""``/gallery``: add a batch of images, read one item, delete one item.

A write is all-or-nothing and ordered: validate and decode everything, encode, store the raw
images, commit the rows and vectors in one transaction, and only then append to the index log
and apply the change to this replica. Any bad input is refused before the first write.
"""

from __future__ import annotations

import logging
from collections import Counter

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from sqlalchemy.exc import IntegrityError

from service import indexlog
from service.api.deps import AdminDep, ImageStoreDep, RedisDep, ServingDep, SessionDep, SettingsDep
from service.api.schemas import (
    MAX_TEXT_LEN,
    GalleryCreateOut,
    GalleryItemCreated,
    GalleryItemOut,
    ItemId,
    Label,
    error_responses,
)
from service.db.session import session_scope
from service.errors import BadRequest, Conflict, NotFound, TooLarge
from service.images import decode_image, pixel_batch, read_limited
from service.repositories import catalog, upgrades
from service.repositories import items as item_repo

log = logging.getLogger(__name__)
router = APIRouter(prefix="/gallery", tags=["gallery"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=GalleryCreateOut,
    dependencies=[AdminDep],
    responses=error_responses(401, 403, 409, 413, 422, 503),
)
def add_items(
    settings: SettingsDep,
    serving: ServingDep,
    redis: RedisDep,
    store: ImageStoreDep,
    image: list[UploadFile] = File(..., description="One file per item (PNG, JPEG, ...)."),
    external_id: list[ItemId] = Form(..., description="The caller's id of each image, in the same order."),
    label: list[Label] | None = Form(None, description="Optional class label of each image, same order."),
) -> GalleryCreateOut:
    n = len(image)
    if n > settings.max_images_per_request:
        raise TooLarge(f"{n} images in one request; the limit is {settings.max_images_per_request} "
            "(HOTREFRESH_MAX_IMAGES_PER_REQUEST)"
        )
    if len(external_id) != n:
        raise BadRequest(f"got {n} images but {len(external_id)} external_id values; send one per image"
        )
    labels: list[str | None] = list(label) if label else [None] * n
    if len(labels) != n:
        raise BadRequest(f"got {n} images but {len(labels)} labels; send one per image or none"
        )
    for ext in external_id:
        if not ext.strip():
            raise BadRequest(f"external_id must be 1 to {MAX_TEXT_LEN} characters, not blank: {ext!r}")
    repeated = [e for e, c in Counter(external_id).items() if c > 1]
    if repeated:
        raise Conflict(f"external_id repeated within the request: {repeated[:10]}")
    serving.require_ready()

    blobs: list[bytes] = []
    for i, (upload, ext) in enumerate(zip(image, external_id, strict=True)):
        what = f"image {i} (external_id {ext!r})"
        data = read_limited(upload.file, settings.max_upload_bytes, what)
        decode_image(data, what, settings.max_image_pixels)  # all of it, or a clear 4xx before any write
        blobs.append(data)

    # A short read transaction (SQLite takes its write lock at BEGIN, so no encoding in here).
    with session_scope(settings.sqlalchemy_url) as s:
        state = catalog.get_serving_state(s)
        gallery_model = state.gallery_model
        if gallery_model is None:
            raise Conflict("no model is registered yet; POST /models first")
        taken = item_repo.existing_external_ids(s, external_id)
        if taken:
            raise Conflict(f"external_id already in the gallery: {sorted(taken)[:10]}")
        upgrade = upgrades.active_upgrade(s)
        # While an upgrade can still be rolled back, keep the old model's vector too, so a
        # rollback never has to re-encode anything (invariant 6).
        models = [gallery_model]
        if upgrade is not None and upgrade.from_model != gallery_model:
            models.append(upgrade.from_model)
        encoders = {m: serving.encoders.get(s, m) for m in models}

    limit = settings.max_image_pixels
    vectors = {m: enc.embed_tensor(pixel_batch(blobs, enc.meta, limit)) for m, enc in encoders.items()}
    keys = [store.put(data) for data in blobs]
    new = [
        item_repo.NewItem(external_id=ext, label=lab, image_key=key, vectors={m: v[i] for m, v in vectors.items()})
        for i, (ext, lab, key) in enumerate(zip(external_id, labels, keys, strict=True))
    ]
    try:
        with session_scope(settings.sqlalchemy_url) as s:
            rows = item_repo.add_items(s, new, active_model=gallery_model)
            created = [
                GalleryItemCreated(external_id=r.external_id, model=r.active_model, id=r.id) for r in rows
            ]
            staged = indexlog.stage(s, "add", gallery_model, [c.id for c in created])
    except IntegrityError:
        # Another request inserted one of these ids between our check and our commit.
        raise Conflict("external_id already in the gallery (concurrent insert)") from None

    indexlog.publish(redis, settings, staged)
    serving.sync_ids(staged.ids)
    return GalleryCreateOut(items=created)


@router.get("/{external_id:path}", response_model=GalleryItemOut, responses=error_responses(404))
def get_item(external_id: ItemId, session: SessionDep, serving: ServingDep) -> GalleryItemOut:
    item = item_repo.get_item(session, external_id)
    if item is None:
        raise NotFound(f"no gallery item with external_id {external_id!r}")
    return GalleryItemOut(
        external_id=item.external_id,
        label=item.label,
        model=item.active_model,
        created_at=item.created_at,
        index_model=serving.index.model_of(item.id),
    )


@router.delete(
    "/{external_id:path}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    dependencies=[AdminDep],
    responses=error_responses(401, 403, 404),
)
def delete_item(external_id: ItemId, settings: SettingsDep, serving: ServingDep, redis: RedisDep) -> Response:
    with session_scope(settings.sqlalchemy_url) as s:
        item = item_repo.get_item(s, external_id)
        if item is None:
            raise NotFound(f"no gallery item with external_id {external_id!r}")
        item_id, model = item.id, item.active_model
        upgrade = upgrades.active_upgrade(s)
        upgrade_id = upgrade.id if upgrade is not None else None
        item_repo.delete_item(s, item)
        staged = indexlog.stage(s, "delete", model, [item_id])

    indexlog.publish(redis, settings, staged)
    if upgrade_id is not None:
        _unqueue(redis, settings, upgrade_id, item_id)
    serving.sync_ids([item_id])
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _unqueue(redis: RedisDep, settings: SettingsDep, upgrade_id: int, item_id: int) -> None:
    """Take a deleted item out of the running upgrade's queue (its backfill task row is gone
    with the item by cascade); a worker that already leased it finds the item gone and acks."""
    from service.queue import BackfillQueue

    try:
        BackfillQueue(redis, settings, upgrade_id).remove([item_id])
    except Exception:  # Redis trouble must not fail a delete SQL already committed
        log.exception("could not remove item %d from upgrade %d's queue", item_id, upgrade_id)
