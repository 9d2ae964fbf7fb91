"""Ids are text a user can type: what a new id may hold, one normal form, every stored id read
and deleted through the API (a property test over generated ids); error bodies carry no object
reprs. The app in-process with its real lifespan, on SQLite and PostgreSQL."""

from __future__ import annotations

import unicodedata
import uuid
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.settings import Settings
from tests.service.api import test_api
from tests.service.api.test_api import snapshot, upload
from tests.utils.images import synthetic_png

pytestmark = pytest.mark.integration
gallery = test_api.gallery  # the fixture: ``old`` registered and 12 items


def url_of(external_id: str) -> str:
    """The item's URL for the TestClient, every character but letters and digits percent-encoded
    (dots too, so no client folds an id of ``..`` into the parent path), and then encoded once
    more: starlette's TestClient unquotes the path httpx has already decoded (a real server
    decodes once), so an id holding ``%1a`` would otherwise arrive as U+001A."""
    once = quote(external_id, safe="").replace(".", "%2E")
    return "/gallery/" + quote(once, safe="")


REFUSED_IDS = {
    "CR LF (a header split)": "a\r\nSet-Cookie: x=1",
    "LF": "a\nb",
    "TAB": "a\tb",
    "ESC (terminal control)": "a\x1b[31mred",
    "RTL override U+202E": "abc\u202etxt.exe",
    "BOM U+FEFF": "\ufeffid",
    "zero-width space": "a\u200bb",
    "line separator U+2028": "a\u2028b",
    "private use": "a\ue000",
    "replacement character (decoded invalid UTF-8)": "a\ufffd",
}


@pytest.mark.parametrize("case", list(REFUSED_IDS))
def test_ids_a_user_cannot_type_are_422_and_change_nothing(
    client: TestClient, gallery: list[str], admin_headers: dict, service_settings: Settings, case: str
) -> None:
    before = snapshot(client, service_settings)
    r = upload(client, admin_headers, [synthetic_png(8)], [REFUSED_IDS[case]])
    assert r.status_code == 422, r.text
    assert "external_id" in r.json()["detail"]
    assert snapshot(client, service_settings) == before


def test_invalid_utf8_in_an_id_is_422(client: TestClient, gallery: list[str], admin_headers: dict) -> None:
    """Bytes that are not UTF-8 are refused, not stored as Latin-1 (what starlette's form parser
    falls back to): the check is service.api.admission's."""
    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="external_id"\r\n\r\n'.encode()
        + b"caf\xe9-\xff\xfe"
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'.encode()
        + b"Content-Type: image/png\r\n\r\n"
        + synthetic_png(8)
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {**admin_headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    r = client.post("/gallery", content=body, headers=headers)
    assert r.status_code == 422, r.text
    assert "UTF-8" in r.json()["detail"]
    # in a URL it decodes to U+FFFD, which no stored id holds: it names nothing
    assert client.get("/gallery/caf%25E9").status_code == 404


def test_one_normal_form_so_visually_equal_ids_are_one_item(
    client: TestClient, gallery: list[str], admin_headers: dict
) -> None:
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    r = upload(client, admin_headers, [synthetic_png(8)], [composed])
    assert r.status_code == 201, r.text
    r = upload(client, admin_headers, [synthetic_png(9)], [decomposed])
    assert r.status_code == 409, r.text
    for form in (composed, decomposed):  # either spelling reads the one item
        r = client.get(url_of(form))
        assert r.status_code == 200 and r.json()["external_id"] == composed
    assert client.delete(url_of(decomposed), headers=admin_headers).status_code == 204
    assert client.get(url_of(composed)).status_code == 404
    # the decomposed spelling first: stored composed
    r = upload(client, admin_headers, [synthetic_png(9)], [decomposed])
    assert r.status_code == 201 and r.json()["items"][0]["external_id"] == composed


IDS = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # lone surrogates cannot be sent as UTF-8 at all
    min_size=0,
    max_size=24,
) | st.sampled_from(list(REFUSED_IDS.values()) + ["..", ".", "a/b", "a%2Fb", "?x=1#f", " x ", "ǅ", "Å", "ﬁ"])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(external_id=IDS)
def test_every_id_the_api_stores_can_be_read_and_deleted(
    client: TestClient, gallery: list[str], admin_headers: dict, external_id: str
) -> None:
    """Whatever the id: a 201 or a 422 (never a 5xx); a stored id is NFC, holds no control or
    format character, and GET and DELETE by it, or by the spelling it was sent in, find it."""
    tag = uuid.uuid4().hex[:6]  # examples must not collide with each other or with the gallery
    sent = external_id + tag
    r = upload(client, admin_headers, [synthetic_png(8)], [sent])
    assert r.status_code in (201, 422), r.text
    if r.status_code == 422:
        assert "external_id" in r.json()["detail"]
        return
    stored = r.json()["items"][0]["external_id"]
    assert stored == unicodedata.normalize("NFC", sent)
    assert all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp") for c in stored)
    for spelling in (stored, sent):
        got = client.get(url_of(spelling))
        assert got.status_code == 200, (spelling, got.text)
        assert got.json()["external_id"] == stored
    assert client.delete(url_of(sent), headers=admin_headers).status_code == 204
    assert client.get(url_of(stored)).status_code == 404


def test_error_bodies_carry_no_object_reprs(client: TestClient, gallery: list[str], admin_headers: dict) -> None:
    """A refusal says what was wrong in words; no ``<... object at 0x...>`` reaches a client."""
    not_an_image = b"hello, I am text" * 10
    answers = [
        upload(client, admin_headers, [not_an_image], ["txt"]),
        client.post("/search", files={"image": ("q.png", not_an_image, "image/png")}),
        client.post("/models", files={"file": ("x.pt", b"not a checkpoint")}, headers=admin_headers),
    ]
    for r in answers:
        assert r.status_code == 422, r.text
        assert " at 0x" not in r.json()["detail"] and "object at" not in r.json()["detail"], r.text


@pytest.mark.parametrize("legacy", ["a\nb", "Set-Cookie\r\nx=1", "tab\there", "esc\x1b[0m"])
def test_an_id_stored_before_the_rules_can_still_be_read_and_deleted(
    client: TestClient, gallery: list[str], admin_headers: dict, service_settings: Settings, legacy: str
) -> None:
    """An item whose id an older version stored (control characters, newlines: refused on writes
    now) is still reachable: GET and DELETE match any text in the path, newlines included."""
    from sqlalchemy import update

    from service.db.schema import GalleryItem
    from service.db.session import session_scope

    with session_scope(service_settings.sqlalchemy_url) as s:  # as an older version stored it
        s.execute(update(GalleryItem).where(GalleryItem.external_id == gallery[0]).values(external_id=legacy))
    got = client.get(url_of(legacy))
    assert got.status_code == 200, got.text
    assert got.json()["external_id"] == legacy
    assert client.delete(url_of(legacy), headers=admin_headers).status_code == 204
    assert client.get(url_of(legacy)).status_code == 404
    assert client.get(url_of(gallery[1])).status_code == 200  # the others untouched
