"""Errors of the mixed index.

All derive from :class:`service.errors.BadRequest` (a ``ValueError``), so one handler turns
any of them into a 422 and callers below the API can catch ``ValueError``; each operation validates everything before it
changes anything, so an error always leaves the index as it was.
"""

from __future__ import annotations

from service.errors import BadRequest


class IndexInputError(BadRequest):
    """A request the index cannot apply (bad shape, dtype, k, calibration, ...)."""


class DimensionError(IndexInputError):
    """Vectors or queries whose dimension differs from the segment's."""


class UnknownIdError(IndexInputError):
    """An id that is not live (in the segment, or anywhere in the index)."""


class DuplicateIdError(IndexInputError):
    """An id given twice in one batch, or added while it is already live."""


class UnknownSegmentError(IndexInputError):
    """A segment (model) name the index does not hold. Not ``service.errors.UnknownModel``: the
    model may well be registered, this replica just holds no vectors of it."""


class SnapshotError(IndexInputError):
    """A snapshot directory that is missing, incomplete or inconsistent."""
