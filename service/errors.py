"""The one base class of requests the service refuses, carrying the HTTP status to answer with.

Domain code (model registry, upgrade control) raises subclasses without knowing about HTTP;
the app turns any of them into ``{"detail": ...}`` with that status in one exception handler.
"""

from __future__ import annotations


class RefusedRequest(ValueError):
    status = 422
