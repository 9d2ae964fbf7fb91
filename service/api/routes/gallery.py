"""``/gallery``: add a batch of images, read one item, delete one item.

A write is all-or-nothing and ordered: validate and decode everything, encode, store the raw
images, commit the rows and vectors in one unit of work (its index change published after the
commit: ``service.indexport``), and only then apply the change to this process's serving index
(read-your-writes). Any bad input is refused before the first write.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, File, Form, Path, Response, UploadFile, status
from starlette.convertors import Convertor, register_url_convertor

from service.api.deps import AdminDep, ImageStoreDep, RedisDep, ServingDep, SessionDep, SettingsDep
from service.api.schemas import (
    GalleryCreateOut,
    GalleryItemCreated,
    GalleryItemOut,
    ItemId,
    Label,
    error_responses,
    form_example,
)
from service.errors import BadRequest, NotFound, TooLarge
from service.gallery import Upload, add_batch, check_ids
from service.images import read_limited
from service.indexport import Change, unit_of_work
from service.repositories import items as item_repo
from service.repositories import upgrades

log = logging.getLogger(__name__)


class AnyText(Convertor[str]):
    """A path parameter of any text, newlines included: Starlette's ``path`` (``.*``) stops at a
    newline, so an id stored before control characters were refused (``service.ids``) could not
    be read or deleted. The URL carries it percent-encoded (``%0A``)."""

    regex = r"[\s\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anytext", AnyText())
ItemPath = Annotated[ItemId, Path(description="The caller's id of the item, percent-encoded.")]
router = APIRouter(prefix="/gallery", tags=["gallery"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=GalleryCreateOut,
    dependencies=[AdminDep],
    responses=error_responses(401, 403, 409, 413, 422, 503),
    openapi_extra=form_example(image=["shoe.png", "shirt.jpg"], external_id=["shoe-1", "shirt-7"], label=["9", "6"]),
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
        raise TooLarge(
            f"{n} images in one request; the limit is {settings.max_images_per_request} "
            "(HOTREFRESH_MAX_IMAGES_PER_REQUEST)"
        )
    if len(external_id) != n:
        raise BadRequest(f"got {n} images but {len(external_id)} external_id values; send one per image")
    labels: list[str | None] = list(label) if label else [None] * n
    if len(labels) != n:
        raise BadRequest(f"got {n} images but {len(labels)} labels; send one per image or none")
    check_ids(external_id)  # before reading any image
    serving.require_ready()
    uploads = [
        Upload(ext, lab, read_limited(f.file, settings.max_upload_bytes, f"image {i} (external_id {ext!r})"))
        for i, (f, ext, lab) in enumerate(zip(image, external_id, labels, strict=True))
    ]
    added = add_batch(settings, redis, store, serving.encoders, uploads)
    if added:  # one batch, one model
        serving.catch_up([Change.add(added[0].model, [a.id for a in added])])
    return GalleryCreateOut(
        items=[GalleryItemCreated(external_id=a.external_id, model=a.model, id=a.id) for a in added]
    )


@router.get("/{external_id:anytext}", response_model=GalleryItemOut, responses=error_responses(404))
def get_item(external_id: ItemPath, session: SessionDep, serving: ServingDep) -> GalleryItemOut:
    item = item_repo.get_item(session, external_id)
    if item is None:
        raise NotFound(f"no gallery item with external_id {external_id!r}")
    return GalleryItemOut(
        external_id=item.external_id,
        label=item.label,
        model=item.active_model,
        created_at=item.created_at,
        index_model=serving.model_of(item.id),
        vector_source=item_repo.vector_source(session, item.id, item.active_model),
    )


@router.delete(
    "/{external_id:anytext}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    dependencies=[AdminDep],
    responses=error_responses(401, 403, 404),
)
def delete_item(external_id: ItemPath, settings: SettingsDep, serving: ServingDep, redis: RedisDep) -> Response:
    with unit_of_work(settings, redis) as uow:
        s = uow.session
        item = item_repo.get_item(s, external_id)
        if item is None:
            raise NotFound(f"no gallery item with external_id {external_id!r}")
        item_id, model = item.id, item.active_model
        upgrade = upgrades.active_upgrade(s)
        upgrade_id = upgrade.id if upgrade is not None else None
        item_repo.delete_item(s, item)
        uow.record(Change.delete([item_id], model))
    if upgrade_id is not None:
        _unqueue(redis, settings, upgrade_id, item_id)
    serving.catch_up(uow.changes)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


def _unqueue(redis: RedisDep, settings: SettingsDep, upgrade_id: int, item_id: int) -> None:
    """Take a deleted item out of the running upgrade's queue (its backfill task row is gone
    with the item by cascade); a worker that already leased it finds the item gone and acks."""
    from service.queue import BackfillQueue

    try:
        BackfillQueue(redis, settings, upgrade_id).remove([item_id])
    except Exception:  # Redis trouble must not fail a delete SQL already committed
        log.exception("could not remove item %d from upgrade %d's queue", item_id, upgrade_id)
