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
    detail: str = Field(description="What was wrong, in words.")


class HealthOut(BaseModel):
    status: str = "ok"


class ReadyOut(BaseModel):
    status: str = "ready"
    query_model: str | None
    counts: dict[str, int] = Field(description="Live vectors per model segment in this replica.")
    log_position: str = Field(description="Last index-log entry this replica has applied.")
    loaded_from: str | None = Field(description="How this replica last loaded: 'sql' or 'snapshot'.")
    plan: dict | None = Field(None, description="The query plan this replica serves (name, version); null: none.")


class GalleryItemCreated(BaseModel):
    external_id: str
    model: str
    id: int


class GalleryCreateOut(BaseModel):
    items: list[GalleryItemCreated]


class GalleryItemOut(BaseModel):
    external_id: str
    label: str | None
    model: str = Field(description="The item's active model in the database (the source of truth).")
    created_at: UtcDatetime
    index_model: str | None = Field(
        description="The segment this replica serves the item from (null while not yet applied)."
    )
    vector_source: Literal["encoded", "mapped"] | None = Field(
        None,
        description="How the active model's vector was made: encoded from the image, or mapped from the old "
        "model's vector by the old->new map (image missing or undecodable, or a vector-only upgrade).",
    )


class SearchResult(BaseModel):
    external_id: str
    score: float
    model: str


class SearchOut(BaseModel):
    query_model: str
    results: list[SearchResult]


class ModelOut(BaseModel):
    name: str
    arch: str
    embedding_dim: int
    num_classes: int
    trained_with: str
    compatible_with: str | None
    content_hash: str
    created_at: UtcDatetime
    is_gallery_model: bool
    is_query_model: bool
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
    gallery_model: str | None
    query_model: str | None
    models: list[ModelOut]


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
