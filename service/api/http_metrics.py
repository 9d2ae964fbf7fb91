"""Request count and latency for every route (``service.metrics.HTTP_REQUESTS`` and
``HTTP_SECONDS``), as one pure ASGI middleware, the outermost, so a request refused by
:class:`~service.api.admission.Admission` (401, 413) is counted like any other.

The ``route`` label is a route template (``/gallery/{external_id}``), never the raw path, so ids
in paths do not become series: the route the router chose (``scope["route"]``, which it sets
for the included routers too), or, for a request answered before routing, the OpenAPI path it
matches (as Admission matches its admin routes); a path no route matches is ``unmatched``, a
method outside :data:`METHODS` is ``other``. Status is the class (``2xx`` ... ``5xx``); a request
whose app raised before answering is a ``5xx``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.admission import path_pattern
from service.metrics import HTTP_REQUESTS, HTTP_SECONDS

UNMATCHED = "unmatched"
_PARAM = re.compile(r"\{[^}]*\}")
# Any other method a client sends is "other": the label's values stay a fixed few.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def openapi_templates(openapi: Callable[[], dict[str, Any]]) -> Callable[[Scope], str | None]:
    """The OpenAPI path template a request's path matches (any method), read at the first use;
    of several (a parameter matches any text, so ``/upgrade/{upgrade_id}`` matches
    ``/upgrade/7/pause`` too), the one with the most literal text."""
    found: list[tuple[str, re.Pattern[str]]] | None = None

    def template_of(scope: Scope) -> str | None:
        nonlocal found
        if found is None:
            paths = openapi().get("paths", {})
            found = sorted(((p, path_pattern(p)) for p in paths), key=lambda t: -len(_PARAM.sub("", t[0])))
        path = scope["path"].rstrip("/") or "/"
        return next((template for template, pattern in found if pattern.fullmatch(path)), None)

    return template_of


def chosen_route(scope: Scope) -> str | None:
    """The template of the route the router handed the request to, if it did."""
    route = scope.get("route")
    if route is None:
        return None
    # path_format drops the convertors: /gallery/{external_id:anytext} -> /gallery/{external_id}
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(template) if template else None


class HttpMetrics:
    def __init__(self, app: ASGIApp, *, template_of: Callable[[Scope], str | None]) -> None:
        self.app = app
        self.template_of = template_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:
            route = chosen_route(scope) or self.template_of(scope) or UNMATCHED
            method = scope["method"] if scope["method"] in METHODS else "other"
            HTTP_REQUESTS.labels(route=route, method=method, status=f"{status // 100}xx").inc()
            HTTP_SECONDS.labels(route=route, method=method).observe(time.perf_counter() - started)
