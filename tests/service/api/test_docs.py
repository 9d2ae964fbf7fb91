"""The API's own documentation: ``/docs`` and ``/redoc`` load only files the package serves itself
(no CDN, no web fonts), and the OpenAPI document describes every schema, field and parameter,
lists upgrade states, strategies and plans as enums from their one definition, gives every
request body an example, carries the package's version and documents the 422 the app answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from models import plans as plan_registry
from models import uncertainty
from service.api.app import create_app
from service.settings import Settings
from service.states import STATES


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    """The app without its lifespan: the docs and the OpenAPI document need no database or index."""
    yield TestClient(create_app(Settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")))


@pytest.fixture
def spec(app_client: TestClient) -> dict[str, Any]:
    r = app_client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]


def _page_urls(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    # and what the page's script loads: Swagger UI's `url: '...'`, ReDoc's spec-url attribute
    return parser.urls + re.findall(r"""\burl:\s*['"]([^'"]+)['"]""", html) + re.findall(r'spec-url="([^"]+)"', html)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_only_local_files_that_answer(app_client: TestClient, page: str) -> None:
    r = app_client.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    html = r.text
    # no absolute or protocol-relative URL anywhere in the page: no CDN script, style, icon or font
    assert re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]", html, re.I) is None, html
    assert "fonts.googleapis" not in html and "cdn." not in html
    urls = _page_urls(html)
    assert any(u.endswith(".js") for u in urls), urls  # the page does load its UI, from here
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        got = app_client.get(url)
        assert got.status_code == 200, url
        assert len(got.content) > 0, url


def test_the_static_files_are_the_pinned_versions(app_client: TestClient) -> None:
    js = app_client.get("/static/docs/swagger-ui/swagger-ui-bundle.js").text
    assert "5.36.0" in js  # swagger-ui-dist's bundle names its version
    redoc = app_client.get("/static/docs/redoc/redoc.standalone.js").text
    assert "2.5.4" in redoc


def _schemas_without_description(node: Any, where: str) -> Iterator[str]:
    """Every schema under ``node`` (properties, items, anyOf/allOf/oneOf members with properties)
    that has neither a description nor a $ref to a described component."""
    if not isinstance(node, dict):
        return
    for name, prop in node.get("properties", {}).items():
        if "description" not in prop:
            yield f"{where}.{name}"
        yield from _schemas_without_description(prop, f"{where}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from _schemas_without_description(node[key], f"{where}[{key}]")
    for key in ("anyOf", "allOf", "oneOf"):
        for i, member in enumerate(node.get(key, [])):
            yield from _schemas_without_description(member, f"{where}<{key}{i}>")


def test_every_schema_property_and_parameter_has_a_description(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    missing = [name for name, schema in schemas.items() if not schema.get("description")]
    for name, schema in schemas.items():
        missing += _schemas_without_description(schema, name)
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            missing += [f"{method} {path} ?{p['name']}" for p in op.get("parameters", []) if not p.get("description")]
    assert missing == []
    assert {"UpgradeView", "ModelOut", "SearchOut", "Checkpoint", "UpgradeIn"} <= set(schemas)  # walked these


def test_the_walk_finds_an_undescribed_field() -> None:
    """The walk above can fail: a schema like FastAPI's own default, nested, is reported."""
    schema = {"description": "x", "properties": {"a": {"description": "y", "items": {"properties": {"b": {}}}}}}
    assert list(_schemas_without_description(schema, "S")) == ["S.a[items].b"]


def _enum_of(spec: dict[str, Any], schema: str, field: str) -> list[str]:
    prop = spec["components"]["schemas"][schema]["properties"][field]
    for member in [prop, *prop.get("anyOf", [])]:
        if "enum" in member:
            return member["enum"]
    raise AssertionError(f"{schema}.{field} is not an enum: {prop}")


def test_states_strategies_and_plans_are_enums_of_their_one_definition(spec: dict[str, Any]) -> None:
    for schema in ("UpgradeView", "UpgradeCreated", "StateOut"):
        assert _enum_of(spec, schema, "state") == list(STATES)
    assert "rolled_back" in _enum_of(spec, "StateOut", "state")
    for schema in ("UpgradeView", "UpgradeIn"):
        assert _enum_of(spec, schema, "strategy") == list(uncertainty.ordering_names())
        assert _enum_of(spec, schema, "plan") == list(plan_registry.requestable())
    assert {"margin", "random"} <= set(_enum_of(spec, "UpgradeIn", "strategy"))
    assert {"dual", "auto"} <= set(_enum_of(spec, "UpgradeIn", "plan"))


def test_every_request_body_has_an_example(spec: dict[str, Any]) -> None:
    schemas = spec["components"]["schemas"]
    bodies = 0
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            for media_type, media in op.get("requestBody", {}).get("content", {}).items():
                bodies += 1
                ref = media["schema"].get("$ref", "").rsplit("/", 1)[-1]
                examples = media.get("example") or media.get("examples") or schemas.get(ref, {}).get("examples")
                assert examples, f"{method} {path} {media_type} has no example"
    assert bodies >= 4  # POST /gallery, /models, /search (multipart) and /upgrade (JSON)


def test_version_is_the_package_version(spec: dict[str, Any]) -> None:
    assert spec["info"]["version"] == version("hotrefresh")
    assert spec["info"]["version"] != "1"


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_422_is_documented_as_the_error_shape_the_app_answers(client: TestClient, spec: dict[str, Any]) -> None:
    documented = spec["paths"]["/upgrade/{upgrade_id}"]["get"]["responses"]["422"]
    assert documented["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorOut"}
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    r = client.get("/upgrade/not-a-number")
    assert r.status_code == 422
    assert isinstance(r.json()["detail"], str)
