"""JSON stored in SQL, read back through one typed model per record.

Every JSON column has one pydantic model that its writer builds and every reader parses
(``service.upgrade.plans.PlanRecord``, ``service.upgrade.probes.BaselineRecord``,
``service.upgrade.records.Checkpoint``; a model's metadata is the checkpoint's own
``models.checkpoint.ModelMeta``, :func:`model_meta`). Each pydantic record carries a
``schema_version``; a record written before a field existed parses with that field's default,
and one that no longer parses is a :class:`StoredRecordError` naming the record, not a
``KeyError`` somewhere downstream.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from models.checkpoint import CheckpointError, ModelMeta
from service.errors import ServiceError

SCHEMA_VERSION = 1


class StoredRecordError(ServiceError, ValueError):
    """A JSON record in SQL that this build cannot read (written by another version, or damaged)."""

    status = 500


class Record(BaseModel):
    """A stored record: unknown keys are kept out (a newer writer's extras do not break a reader)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    schema_version: int = Field(default=SCHEMA_VERSION, description="The version of the record's stored form.")


R = TypeVar("R", bound=Record)


def parse(model: type[R], data: Any, what: str) -> R:
    """``data`` as ``model``, or a :class:`StoredRecordError` that names the record ``what``."""
    try:
        record = model.model_validate(data)
    except ValidationError as e:
        raise StoredRecordError(f"stored {what} does not parse as {model.__name__}: {e}") from None
    if record.schema_version > SCHEMA_VERSION:
        raise StoredRecordError(
            f"stored {what} has schema_version {record.schema_version}; this build reads up to {SCHEMA_VERSION}"
        )
    return record


def model_meta(name: str, data: Any) -> ModelMeta:
    """``ModelRow.meta``: the checkpoint's own metadata (``models.checkpoint.ModelMeta``, what
    registration wrote with ``to_dict``), read back through its validating ``from_dict``."""
    if not isinstance(data, dict):
        raise StoredRecordError(f"stored metadata of model {name!r} is not an object: {type(data).__name__}")
    try:
        return ModelMeta.from_dict(data)
    except (CheckpointError, TypeError, ValueError) as e:
        raise StoredRecordError(f"stored metadata of model {name!r} does not parse: {e}") from None
