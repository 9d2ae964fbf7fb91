"""What a request passes before any route reads its body (``service.api.admission``): the admin
token first, then a body limit counted on the bytes actually received, chunked or not.

The app of ``create_app`` is driven through its ASGI interface with a body that is produced
on demand, so a test counts the bytes the server pulled, not the time it took: an unauthenticated
200 MB admin request must be answered having pulled none, a 200 MB chunked upload having pulled
no more than the route's limit (and left nothing spooled)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import pytest

from service.api.admission import DEFAULT_BODY_LIMIT
from service.settings import Settings
from tests.utils.env import ADMIN_TOKEN

pytestmark = pytest.mark.integration

MB = 1 << 20
HUGE = 200 * MB


class Body:
    """An ASGI ``receive`` that hands out ``total`` bytes in 1 MB messages, counting them."""

    def __init__(self, total: int, chunk: bytes = b"0" * MB) -> None:
        self.total, self.chunk, self.pulled = total, chunk, 0

    async def __call__(self) -> dict:
        if self.pulled >= self.total:
            return {"type": "http.disconnect"}
        piece = self.chunk[: self.total - self.pulled]
        self.pulled += len(piece)
        return {"type": "http.request", "body": piece, "more_body": self.pulled < self.total}


def call(settings: Settings, method: str, path: str, headers: dict[str, str], body: Body) -> tuple[int, dict]:
    """One request through the whole app (its middleware, routing, FastAPI's body parsing)."""
    from service.api.app import create_app

    app = create_app(settings)
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    asyncio.run(app(scope, body, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(payload)


ADMIN_ROUTES = [
    ("POST", "/upgrade", "application/json"),
    ("POST", "/models", "multipart/form-data; boundary=xyz"),
    ("POST", "/gallery", "multipart/form-data; boundary=xyz"),
    ("POST", "/upgrade/1/pause", "application/json"),
    ("DELETE", "/gallery/some-id", "application/octet-stream"),
]


@pytest.mark.parametrize(("method", "path", "content_type"), ADMIN_ROUTES)
@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("token", [None, "wrong"], ids=["no token", "wrong token"])
def test_an_unauthenticated_admin_request_is_refused_before_its_body_is_read(
    service_settings: Settings, method: str, path: str, content_type: str, declared: bool, token: str | None
) -> None:
    headers = {"Content-Type": content_type}
    if declared:
        headers["Content-Length"] = str(HUGE)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = Body(HUGE)
    status, doc = call(service_settings, method, path, headers, body)
    assert (status, body.pulled) == (401 if token is None else 403, 0), doc
    assert isinstance(doc["detail"], str) and ("bearer" in doc["detail"] or "wrong" in doc["detail"])


def _spooled(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


class FilePart(Body):
    """A multipart body of one endless file part: its headers, then zeros."""

    def __init__(self, total: int, field: str) -> None:
        head = f'--xyz\r\nContent-Disposition: form-data; name="{field}"; filename="x"\r\n\r\n'.encode()
        super().__init__(total, head + b"0" * (MB - len(head)))

    async def __call__(self) -> dict:
        message = await super().__call__()
        self.chunk = b"0" * MB
        return message


@pytest.mark.parametrize(("path", "admin", "limit"), [("/search", False, 3 * MB), ("/gallery", True, 5 * MB)])
def test_a_chunked_200_mb_body_is_refused_having_pulled_no_more_than_the_limit(
    service_settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, path: str, admin: bool, limit: int
) -> None:
    """No Content-Length to trust: the bytes are counted as they arrive, and what was spooled
    before the limit is gone. Limits here: 2 MB per image, 2 images, 1 MB of form overhead."""
    settings = service_settings.model_copy(update={"max_upload_bytes": 2 * MB, "max_images_per_request": 2})
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))  # where starlette spools file parts
    headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
    if admin:
        headers["Authorization"] = f"Bearer {ADMIN_TOKEN}"
    body = FilePart(HUGE, "image")
    status, doc = call(settings, "POST", path, headers, body)
    assert status == 413, doc
    assert "limit" in doc["detail"]
    assert body.pulled <= limit + MB < HUGE
    assert _spooled(spool) == 0


def test_a_200_mb_json_body_with_the_token_is_refused_at_the_json_limit(service_settings: Settings) -> None:
    """The admin's own requests are bounded too: POST /upgrade takes a small JSON document."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {ADMIN_TOKEN}"}
    body = Body(HUGE, b" " * MB)
    status, doc = call(service_settings, "POST", "/upgrade", headers, body)
    assert status == 413, doc
    assert body.pulled <= DEFAULT_BODY_LIMIT + MB < HUGE
