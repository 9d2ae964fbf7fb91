"""The one family of errors the service answers with, each carrying its HTTP status.

Domain code (registry, upgrade control, image reading, the index) raises these without knowing
about HTTP; the API turns any of them into ``{"detail": ...}`` with that status in one exception
handler (``service.api.app``). Routes raise them too, never ``HTTPException``, so every refusal
goes through the same path. Each subclass of :class:`BadRequest` is also a ``ValueError``, so
code below the API that validates input can keep catching ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.exceptions
from sqlalchemy import exc as sa_exc


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


class DependencyDown(Unavailable):
    """The database or Redis could not be reached: a fault of the infrastructure, not of the
    request, answered 503 with the dependency named (and counted, ``service.metrics``)."""

    headers = {"Retry-After": "5"}

    def __init__(self, dependency: str, cause: BaseException) -> None:
        first_line = (str(getattr(cause, "orig", None) or cause).strip().splitlines() or [type(cause).__name__])[0]
        super().__init__(f"{dependency} unavailable: {first_line[:200]}")
        self.dependency = dependency


def dependency_down(exc: BaseException) -> DependencyDown | None:
    """The :class:`DependencyDown` an exception from SQLAlchemy or redis-py stands for, or None
    when it is not a lost connection (a constraint violation, a bad query: bugs stay 500s).

    SQLAlchemy's ``OperationalError`` is what a refused or dropped connection raises on both
    databases (and SQLite's "database is locked" after its busy timeout: also worth a retry);
    ``InterfaceError`` is a connection already closed under us."""
    if isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError) or (
        isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    ):
        return DependencyDown("database", exc)
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return DependencyDown("redis", exc)
    return None


# What an exception handler for lost dependencies registers (``dependency_down`` sorts them).
DEPENDENCY_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.DBAPIError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

__all__ = [
    "DEPENDENCY_ERRORS",
    "BadRequest",
    "Conflict",
    "DependencyDown",
    "Forbidden",
    "NotFound",
    "ServiceError",
    "TooLarge",
    "Unauthorized",
    "Unavailable",
    "UnknownModel",
    "dependency_down",
]
