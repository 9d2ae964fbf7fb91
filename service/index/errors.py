"""Errors of the mixed index.

All derive from ``ValueError`` so callers (HTTP routes, the index-log follower) can turn any
bad request into a 4xx with one ``except``; each operation validates everything before it
changes anything, so an error always leaves the index as it was.
"""

from __future__ import annotations


class IndexInputError(ValueError):
    """A request the index cannot apply (bad shape, dtype, k, calibration, ...)."""


class DimensionError(IndexInputError):
    """Vectors or queries whose dimension differs from the segment's."""


class UnknownIdError(IndexInputError):
    """An id that is not live (in the segment, or anywhere in the index)."""


class DuplicateIdError(IndexInputError):
    """An id given twice in one batch, or added while it is already live."""


class UnknownModelError(IndexInputError):
    """A model (segment) name the index does not hold."""


class SnapshotError(IndexInputError):
    """A snapshot directory that is missing, incomplete or inconsistent."""
