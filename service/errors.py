"""The one family of errors the service answers with, each carrying its HTTP status.

Domain code (registry, upgrade control, image reading, the index) raises these without knowing
about HTTP; the API turns any of them into ``{"detail": ...}`` with that status in one exception
handler (``service.api.app``). Routes raise them too, never ``HTTPException``, so every refusal
goes through the same path. Each subclass of :class:`BadRequest` is also a ``ValueError``, so
code below the API that validates input can keep catching ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping


class ServiceError(Exception):
    """A request the service refuses or cannot serve now; ``status`` is the HTTP answer."""

    status = 500
    headers: Mapping[str, str] | None = None


class BadRequest(ServiceError, ValueError):
    """Invalid input; nothing was changed."""

    status = 422


class Unauthorized(ServiceError):
    status = 401
    headers = {"WWW-Authenticate": "Bearer"}


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    """Not allowed in the current state (of an upgrade, of the registry, of the gallery)."""

    status = 409


class TooLarge(ServiceError, ValueError):
    status = 413


class Unavailable(ServiceError):
    """Something this request needs is not ready or not reachable; retrying later can work."""

    status = 503


class UnknownModel(NotFound):
    """A model name that is not registered: the one such error, wherever it is found."""


__all__ = ["BadRequest", "Conflict", "Forbidden", "NotFound", "ServiceError", "TooLarge", "Unauthorized",
           "Unavailable", "UnknownModel"]
