"""What ``/openapi.json`` says beyond what FastAPI derives from the routes and schemas: the
package's version, and the truth about the two kinds of schema FastAPI writes on its own.

- A route whose parameters can fail validation gets FastAPI's default 422 schema
  (``HTTPValidationError``: a list of errors), but this app answers every 422 with the one error
  shape ``{"detail": "..."}`` (``service.api.app``), so those responses point to ``ErrorOut``.
- A multipart route's form is a schema FastAPI names ``Body_<operation>`` and leaves without a
  description; it gets one naming its route (its fields are described at the route).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from service.api.schemas import ErrorOut, error_responses

PACKAGE = "hotrefresh"
_DEFAULT_422 = {"HTTPValidationError", "ValidationError"}
_REF = "#/components/schemas/"


def package_version() -> str:
    """The installed package's version (pyproject.toml), the API's ``info.version``."""
    try:
        return version(PACKAGE)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def documented(generate: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """Wrap ``app.openapi`` (which builds the document once and caches it): the same document,
    corrected once, as above."""
    done: dict[str, Any] | None = None

    def openapi() -> dict[str, Any]:
        nonlocal done
        if done is None:
            done = _corrected(generate())
        return done

    return openapi


def _corrected(spec: dict[str, Any]) -> dict[str, Any]:
    schemas: dict[str, Any] = spec.setdefault("components", {}).setdefault("schemas", {})
    error_ref = {"$ref": _REF + ErrorOut.__name__}
    for path, operations in spec.get("paths", {}).items():
        for method, operation in operations.items():
            answer = operation.get("responses", {}).get("422")
            if answer is not None and _refers_to(answer, _DEFAULT_422):
                operation["responses"]["422"] = {
                    "description": error_responses(422)[422]["description"],
                    "content": {"application/json": {"schema": error_ref}},
                }
            for media in operation.get("requestBody", {}).get("content", {}).values():
                name = media.get("schema", {}).get("$ref", "").removeprefix(_REF)
                if name.startswith("Body_") and name in schemas:
                    schemas[name].setdefault("description", f"The form fields of {method.upper()} {path}.")
    for name in _DEFAULT_422:
        if not _used(spec, name):
            schemas.pop(name, None)
    return spec


def _refers_to(node: Any, names: set[str]) -> bool:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.removeprefix(_REF) in names:
            return True
        return any(_refers_to(v, names) for v in node.values())
    if isinstance(node, list):
        return any(_refers_to(v, names) for v in node)
    return False


def _used(spec: dict[str, Any], name: str) -> bool:
    rest = {k: v for k, v in spec.get("components", {}).get("schemas", {}).items() if k not in _DEFAULT_422}
    return _refers_to(spec.get("paths", {}), {name}) or _refers_to(rest, {name})
