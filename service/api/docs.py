"""The API's documentation pages, ``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served from the
files this package ships (``static/``, versions in ``static/VERSIONS.md``) rather than FastAPI's
defaults, which load scripts, styles, icons and web fonts from CDNs: an operator on a closed
network still gets working pages, and the pages do not change when a CDN's ``@5`` does.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/static/docs"
PINNED = {"swagger-ui-dist": "5.36.0", "redoc": "2.5.4"}  # what static/ holds (static/VERSIONS.md)
DOCS_URL = "/docs"
REDOC_URL = "/redoc"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# Swagger UI's default shows a badge loaded from validator.swagger.io: an outside request.
SWAGGER_PARAMETERS = {"validatorUrl": None}


def _static(name: str) -> str:
    return f"{STATIC_PREFIX}/{name}"


def serve_docs(app: FastAPI) -> None:
    """Mount the static files and add the two pages (and Swagger UI's OAuth2 redirect); the app
    must be created with ``docs_url=None, redoc_url=None`` so FastAPI's CDN pages are not there."""
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"
    icon = _static("swagger-ui/favicon-32x32.png")

    @app.get(DOCS_URL, include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_js_url=_static("swagger-ui/swagger-ui-bundle.js"),
            swagger_css_url=_static("swagger-ui/swagger-ui.css"),
            swagger_favicon_url=icon,
            swagger_ui_parameters=SWAGGER_PARAMETERS,
        )

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_URL, include_in_schema=False)
    def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=_static("redoc/redoc.standalone.js"),
            redoc_favicon_url=icon,
            with_google_fonts=False,
        )
