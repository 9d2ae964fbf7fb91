"""What a request must pass before any route reads its body: the admin token on admin routes, a
body limit counted on the bytes actually received, and form fields that are UTF-8 text.

Why an ASGI middleware and not the ``require_admin`` dependency alone: FastAPI reads, parses and
spools the whole body (JSON into memory, multipart to temporary files) before it runs a route's
dependencies, so a 200 MB ``POST /upgrade`` without a token cost 594 MB of memory before its
401, and ``Content-Length`` is only a claim (a chunked body has none). Here the token is checked
from the headers before ``receive`` is called once, and every body message is counted as it
arrives: past the route's limit the client gets a 413 and the route a refusal to read further,
so no route ever holds or spools more than its limit. ``require_admin`` stays on the routes:
it documents them in OpenAPI and is a second check behind this one.

Form fields are checked here too, because starlette decodes a field that is not UTF-8 as
Latin-1 without a word, after which ``caf\\xe9`` and ``café`` cannot be told apart.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Callable
from typing import Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import BadRequest, Forbidden, ServiceError, TooLarge, Unauthorized

DEFAULT_BODY_LIMIT = 64 * 1024  # a JSON request (POST /upgrade) or a body no route reads
MAX_FIELD_BYTES = 1 << 20  # starlette's own limit on one form field that is not a file


class _Refused(Exception):
    """Raised into the route from ``receive`` once the refusal has been sent."""


def admin_refusal(authorization: str | None, token: str) -> ServiceError | None:
    """The admin check on a raw ``Authorization`` header (the middleware and ``require_admin`` both
    run it): None if it carries the admin token; compared in constant time."""
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials:
        return Unauthorized("admin bearer token required (Authorization: Bearer $HOTREFRESH_ADMIN_TOKEN)")
    if not secrets.compare_digest(credentials.encode(), token.encode()):
        return Forbidden("wrong admin token")
    return None


def _answer(refusal: ServiceError) -> JSONResponse:
    return JSONResponse(status_code=refusal.status, content={"detail": str(refusal)}, headers=refusal.headers)


class Admission:
    """The middleware: ``is_admin(scope)`` names the routes that need the token, ``limit_of(scope)``
    the most body bytes a request to that route may send."""

    def __init__(
        self, app: ASGIApp, *, is_admin: Callable[[Scope], bool], limit_of: Callable[[Scope], int], token: str
    ) -> None:
        self.app = app
        self.is_admin = is_admin
        self.limit_of = limit_of
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.is_admin(scope):
            refusal = admin_refusal(headers.get(b"authorization"), self.token)
            if refusal is not None:
                await _answer(refusal)(scope, receive, send)
                return
        limit = self.limit_of(scope)
        where = f"{scope['method']} {scope['path']}"
        declared = headers.get(b"content-length", "")
        if declared.isdigit() and int(declared) > limit:  # refused before a byte of it is read
            await _answer(TooLarge(f"request body of {int(declared)} bytes exceeds the limit {limit} of {where}"))(
                scope, receive, send
            )
            return
        form = _FormText.of(headers.get(b"content-type", ""))
        received = 0
        state = {"started": False, "refused": False}

        async def refuse(refusal: ServiceError) -> None:
            state["refused"] = True
            if not state["started"]:
                await _answer(refusal)(scope, receive, send)
            raise _Refused

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request" and not state["refused"]:
                body = message.get("body", b"")
                received += len(body)
                if received > limit:
                    await refuse(TooLarge(f"request body exceeds the limit of {limit} bytes of {where}"))
                if form is not None:
                    problem = form.feed(body)
                    if problem is not None:
                        await refuse(BadRequest(problem))
            return message

        async def guarded(message: Message) -> None:
            if state["refused"]:  # the route's answer to the read that failed: ours went first
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        with contextlib.suppress(_Refused):
            await self.app(scope, counted, guarded)


class _FormText:
    """A second, streaming parse of a multipart body that only checks that every field that is
    not a file is UTF-8 (its name too); file parts pass through unread. Bounded: a field longer
    than starlette accepts is left for starlette to refuse."""

    def __init__(self, boundary: bytes) -> None:
        self.problem: str | None = None
        self._field = bytearray()
        self._disposition = bytearray()
        self._header = bytearray()
        self._value = bytearray()
        self._is_file = False
        self._parser: MultipartParser | None = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": lambda d, s, e: self._header.extend(d[s:e]),
                "on_header_value": lambda d, s, e: self._value.extend(d[s:e]),
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_part_end": self._end,
            },
        )

    @classmethod
    def of(cls, content_type: str) -> _FormText | None:
        kind, options = parse_options_header(content_type)
        boundary = options.get(b"boundary")
        if kind != b"multipart/form-data" or not boundary:
            return None
        return cls(boundary)

    def feed(self, chunk: bytes) -> str | None:
        if self.problem is None and self._parser is not None and chunk:
            try:
                self._parser.write(chunk)
            except MultipartParseError:  # a malformed body: starlette's own parse answers it
                self._parser = None
        return self.problem

    def _begin(self) -> None:
        self._field.clear()
        self._disposition.clear()
        self._is_file = False

    def _header_end(self) -> None:
        if bytes(self._header).lower() == b"content-disposition":
            self._disposition[:] = self._value
        self._header.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(bytes(self._disposition))
        self._is_file = b"filename" in options
        name = options.get(b"name", b"")
        if not _is_utf8(name):
            self.problem = "a form field's name is not valid UTF-8"

    def _data(self, data: bytes, start: int, end: int) -> None:
        if not self._is_file and len(self._field) <= MAX_FIELD_BYTES:
            self._field.extend(data[start:end])

    def _end(self) -> None:
        if not self._is_file and self.problem is None and not _is_utf8(bytes(self._field)):
            _, options = parse_options_header(bytes(self._disposition))
            name = options.get(b"name", b"?").decode("utf-8", "replace")
            self.problem = f"{name}: must be valid UTF-8 text"


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def admin_routes(openapi: Callable[[], dict[str, Any]]) -> Callable[[Scope], bool]:
    """``is_admin`` for :class:`Admission`: the operations the app's own OpenAPI document marks
    with the bearer scheme (every route that depends on ``require_admin``), read at the first
    request, so the list is the routes themselves, not a copy to keep in step. A path parameter
    matches any text, slashes and newlines included, as ``{external_id:anytext}`` does."""
    found: list[tuple[str, re.Pattern[str]]] | None = None

    def is_admin(scope: Scope) -> bool:
        nonlocal found
        if found is None:
            found = [
                (method.upper(), path_pattern(path))
                for path, operations in openapi().get("paths", {}).items()
                for method, operation in operations.items()
                if operation.get("security")
            ]
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        return any(method == m and pattern.fullmatch(path) for m, pattern in found)

    return is_admin


def path_pattern(path: str) -> re.Pattern[str]:
    """``/upgrade/{upgrade_id}/pause`` as a pattern: each ``{...}`` any non-empty text."""
    parts = re.split(r"\{[^}]*\}", path)
    return re.compile(".+".join(re.escape(p) for p in parts), re.S)
