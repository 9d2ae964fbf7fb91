"""Request and response bodies of the HTTP API, kept apart from the ORM rows so the wire format
changes only when we mean it to."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from service.ids import normal_form
from service.timestamps import UtcDatetime

MAX_TEXT_LEN = 256  # external ids and labels: what the columns hold on both databases


def storable(value: str) -> str:
    """One input rule for both databases: refuse what PostgreSQL's text cannot hold (NUL) and
    what cannot be encoded at all (lone surrogates), so SQLite, which would store either, does
    not accept what PostgreSQL would answer with a 500."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (no lone surrogates)") from None
    return value


def nfc(value: str) -> str:
    """An external id in the one form it is stored and looked up in (``service.ids``), so a
    composed and a decomposed ``café`` name one item; still no longer than a column holds."""
    value = normal_form(value)
    if len(value) > MAX_TEXT_LEN:
        raise ValueError(f"must be at most {MAX_TEXT_LEN} characters in Unicode NFC")
    return value


StoredText = Annotated[str, AfterValidator(storable)]
# Lenient on purpose beyond NFC: GET and DELETE take it too, so an id stored before
# service.ids.id_problem refused control characters can still be read and deleted; what a new
# item's id may be is checked by service.gallery.check_ids on every write path.
ItemId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_TEXT_LEN), AfterValidator(storable), AfterValidator(nfc)
]
Label = Annotated[str, StringConstraints(max_length=MAX_TEXT_LEN), AfterValidator(storable)]


class ErrorOut(BaseModel):
    """Every refusal and error, whatever its status."""

    detail: str = Field(description="What was wrong, in words.")


class HealthOut(BaseModel):
    """The process serves HTTP (liveness)."""

    status: str = Field(default="ok", description="Always ok.")


class ReadyOut(BaseModel):
    """This replica has loaded its index and reaches the database and Redis (readiness)."""

    status: str = Field(default="ready", description="Always ready (otherwise the answer is a 503).")
    query_model: str | None = Field(description="The model queries are encoded with; null before any is registered.")
    counts: dict[str, int] = Field(description="Live vectors per model segment in this replica.")
    log_position: str = Field(description="Last index-log entry this replica has applied.")
    loaded_from: str | None = Field(description="How this replica last loaded: 'sql' or 'snapshot'.")
    plan: dict | None = Field(None, description="The query plan this replica serves (name, version); null: none.")


class GalleryItemCreated(BaseModel):
    """One item added to the gallery."""

    external_id: str = Field(description="The caller's id of the item (in Unicode NFC).")
    model: str = Field(description="The model its vector was encoded with.")
    id: int = Field(description="The item's internal id.")


class GalleryCreateOut(BaseModel):
    """The items added by one POST /gallery, in the order sent."""

    items: list[GalleryItemCreated] = Field(description="One per uploaded image, in the order sent.")


class GalleryItemOut(BaseModel):
    """One gallery item, and where this replica serves it from."""

    external_id: str = Field(description="The caller's id of the item (in Unicode NFC).")
    label: str | None = Field(description="Its class label; null if given none.")
    model: str = Field(description="The item's active model in the database (the source of truth).")
    created_at: UtcDatetime = Field(description="When it was added (UTC).")
    index_model: str | None = Field(
        description="The segment this replica serves the item from (null while not yet applied)."
    )
    vector_source: Literal["encoded", "mapped"] | None = Field(
        None,
        description="How the active model's vector was made: encoded from the image, or mapped from the old "
        "model's vector by the old->new map (image missing or undecodable, or a vector-only upgrade).",
    )


class SearchResult(BaseModel):
    """One gallery item found, with its score under the serving query plan."""

    external_id: str = Field(description="The item's id as the client gave it.")
    score: float = Field(description="Its similarity to the query as merged across segments (higher is closer).")
    model: str = Field(description="The model segment the item was found in (old or new during an upgrade).")


class SearchOut(BaseModel):
    """The top k gallery items for the query image, best first."""

    query_model: str = Field(description="The model the query image was encoded with.")
    results: list[SearchResult] = Field(description="At most k items, best first, each item at most once.")


class ModelOut(BaseModel):
    """One registered encoder."""

    name: str = Field(description="The model's name, unique in the registry.")
    arch: str = Field(description="Its architecture (as its checkpoint or metadata names it).")
    embedding_dim: int = Field(description="The dimension of its embeddings.")
    num_classes: int = Field(description="Classes of its classifier head; 0: none.")
    trained_with: str = Field(description="How it was trained (classification, ract, bct, independent, external, ...).")
    compatible_with: str | None = Field(description="The model whose space it declares compatible; null: none.")
    content_hash: str = Field(description="SHA-256 of its weights (identical weights, identical hash).")
    created_at: UtcDatetime = Field(description="When it was registered (UTC).")
    is_gallery_model: bool = Field(description="Whether the gallery is on this model (outside an upgrade).")
    is_query_model: bool = Field(description="Whether queries are encoded with this model now.")
    lineage: list[str] = Field(
        description="This model, the model it declares compatibility with, and so on "
        "back to the first: the generations of a sequence of upgrades."
    )
    replaced: str | None = Field(
        None, description="The model a committed upgrade moved the gallery from onto this one; null if none did."
    )
    format: str = Field("checkpoint", description="checkpoint (hotrefresh's own) or torchscript (bring your own).")
    input_channels: int = Field(1, description="1 (grey) or 3 (RGB): what every image is converted to.")
    input_size: list[int] = Field([28, 28], description="[height, width] of the model's input.")
    resize: str = Field("stretch", description="center_crop (short side resized, centre crop) or stretch.")
    has_classifier: bool = Field(
        True, description="False: registered without a head; only the random backfill order applies to upgrades to it."
    )


class ModelsOut(BaseModel):
    """The registry: every model, and which ones serve."""

    gallery_model: str | None = Field(description="The gallery's model; null before any is registered.")
    query_model: str | None = Field(description="The model queries are encoded with; null before any is registered.")
    models: list[ModelOut] = Field(description="Every registered model, oldest first.")


_ERROR_TEXT = {
    401: "Missing admin bearer token.",
    403: "Wrong admin token.",
    404: "Not found.",
    409: "Conflict with the current state.",
    413: "Upload too large.",
    422: "Invalid input; nothing was changed.",
    503: "The index is still loading.",
}


def error_responses(*codes: int) -> dict[int | str, dict]:
    """OpenAPI entries for the error statuses a route can answer, all with the ``{"detail"}`` shape."""
    return {code: {"model": ErrorOut, "description": _ERROR_TEXT[code]} for code in codes}


def form_example(**fields: object) -> dict[str, object]:
    """``openapi_extra`` of a multipart route: one example of its form (a file by its name)."""
    return {"requestBody": {"content": {"multipart/form-data": {"example": fields}}}}
