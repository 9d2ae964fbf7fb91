"""``/models``: the registry of checkpoints. The first model registered becomes the gallery and
query model; later ones are upgrade targets."""

from __future__ import annotations

from fastapi import APIRouter, File, Form, UploadFile, status
from sqlalchemy.exc import IntegrityError

from service.api.deps import AdminDep, RedisDep, ServingDep, SessionDep, SettingsDep
from service.api.schemas import ModelOut, ModelsOut, StoredText, error_responses, form_example
from service.db.schema import ModelRow, ServingState
from service.db.session import read_scope
from service.errors import BadRequest, Conflict
from service.images import read_limited
from service.indexport import Change, unit_of_work
from service.records import model_meta
from service.registry import add, parse_metadata_upload, prepare, resolve_model_path, save_upload
from service.repositories import catalog, upgrades

router = APIRouter(prefix="/models", tags=["models"])

# Checkpoints are far larger than images; this bounds one upload, not the model directory.
MAX_CHECKPOINT_BYTES = 1 << 30
MAX_METADATA_BYTES = 1 << 20


def _out(
    row: ModelRow, state: ServingState, models: dict[str, ModelRow], replaced: dict[str, str] | None = None
) -> ModelOut:
    meta = model_meta(row.name, row.meta)
    return ModelOut(
        format=str(meta.extra.get("format", "checkpoint")),
        input_channels=meta.input_channels,
        input_size=list(meta.input_size),
        resize=meta.resize,
        has_classifier=row.num_classes > 0,
        lineage=catalog.lineage(models, row.name),
        replaced=(replaced or {}).get(row.name),
        name=row.name,
        arch=row.arch,
        embedding_dim=row.embedding_dim,
        num_classes=row.num_classes,
        trained_with=row.trained_with,
        compatible_with=row.compatible_with,
        content_hash=row.content_hash,
        created_at=row.created_at,
        is_gallery_model=row.name == state.gallery_model,
        is_query_model=row.name == state.query_model,
    )


@router.get("", response_model=ModelsOut)
def list_models(session: SessionDep) -> ModelsOut:
    # A read-only session: before the first registration there is no row, and an empty one says so.
    state = catalog.peek_serving_state(session) or ServingState(gallery_model=None, query_model=None)
    rows = catalog.list_models(session)
    by_name = {row.name: row for row in rows}
    replaced = upgrades.committed_sources(session)
    return ModelsOut(
        gallery_model=state.gallery_model,
        query_model=state.query_model,
        models=[_out(row, state, by_name, replaced) for row in rows],
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ModelOut,
    dependencies=[AdminDep],
    responses=error_responses(401, 403, 409, 413, 422),
    openapi_extra=form_example(path="new.pt"),
)
def register_model(
    settings: SettingsDep,
    serving: ServingDep,
    redis: RedisDep,
    file: UploadFile | None = File(
        None, description="An encoder file to upload: a hotrefresh checkpoint or a TorchScript encoder."
    ),
    metadata: UploadFile | None = File(
        None, description="With a TorchScript `file`: its metadata (JSON), unless the archive carries it."
    ),
    path: StoredText | None = Form(
        None,
        description="Or: an encoder already in the model directory (HOTREFRESH_MODEL_DIR); a "
        "TorchScript encoder's metadata beside it as <name>.json or inside the archive.",
    ),
) -> ModelOut:
    if (file is None) == (path is None or path == ""):
        raise BadRequest("send exactly one of: an encoder `file`, or a `path` in the model directory")
    if metadata is not None and file is None:
        raise BadRequest(
            "`metadata` goes with an uploaded `file`; beside a `path`, put it in the model "
            "directory as the file's .json"
        )
    doc = parse_metadata_upload(read_limited(metadata.file, MAX_METADATA_BYTES, "metadata")) if metadata else None
    try:
        if file is not None:
            ckpt, uploaded = save_upload(settings, file.file, MAX_CHECKPOINT_BYTES), True
        else:
            ckpt, uploaded = resolve_model_path(settings, path or ""), False
        # The slow part (the sandbox, loading) on a read-only session, then a short write.
        with read_scope(settings.sqlalchemy_url) as s:
            prepared = prepare(s, settings, serving.encoders, ckpt, uploaded=uploaded, metadata=doc)
        with unit_of_work(settings, redis) as uow:
            s = uow.session
            row, first = add(s, settings, serving.encoders, prepared)
            out = _out(row, catalog.get_serving_state(s), {m.name: m for m in catalog.list_models(s)})
            if first:  # the query model changed from none to this one: every replica must hear of it
                uow.record(Change.switch(out.name))
    except IntegrityError:
        raise Conflict("a model with this name was registered concurrently") from None
    serving.catch_up(uow.changes)
    return out
