"""The FastAPI application, built by :func:`create_app` (uvicorn runs it with ``--factory``), so
nothing — settings, Redis, the index — is created at import time.

Start-up loads this replica's index from SQL in the background thread that then follows the
index log; ``/healthz`` answers at once and ``/readyz`` only once the index is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis as redis_lib
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import Scope

from service.api.admission import DEFAULT_BODY_LIMIT, Admission, admin_routes
from service.api.docs import serve_docs
from service.api.http_metrics import HttpMetrics, openapi_templates
from service.api.openapi import documented, package_version
from service.api.routes import gallery, health, metrics, models, search
from service.api.serving import Serving
from service.errors import DEPENDENCY_ERRORS, DependencyDown, ServiceError, dependency_down
from service.imagestore import image_store_for
from service.metrics import DEPENDENCY_UNAVAILABLE
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)

MULTIPART_OVERHEAD = 1 << 20  # form fields and part headers around the files


def _validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = redis_lib.Redis.from_url(settings.effective_redis_url)
        serving = Serving(settings, redis)
        app.state.settings = settings
        app.state.redis = redis
        app.state.serving = serving
        app.state.image_store = image_store_for(settings)
        serving.start()
        try:
            yield
        finally:
            serving.stop()
            try:
                serving.save_snapshot()
            except Exception:  # a failed snapshot only costs the next start a full SQL load
                log.exception("could not write the index snapshot")
            redis.close()

    app = FastAPI(
        title="hotrefresh",
        version=package_version(),
        summary="Image retrieval with hot-refresh model upgrades.",
        lifespan=lifespan,
        docs_url=None,  # served from the package's own files by serve_docs below: no CDN
        redoc_url=None,
    )
    app.openapi = documented(app.openapi)  # type: ignore[method-assign]
    serve_docs(app)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _validation_detail(exc)})

    @app.exception_handler(ServiceError)
    async def _refused(_request: Request, exc: ServiceError) -> JSONResponse:
        # The one place a refusal becomes HTTP (service.errors): status and headers travel with it.
        if isinstance(exc, DependencyDown):  # raised as such (the object store, Milvus) or sorted below
            DEPENDENCY_UNAVAILABLE.labels(exc.dependency).inc()
        return JSONResponse(status_code=exc.status, content={"detail": str(exc)}, headers=exc.headers)

    async def _dependency(request: Request, exc: Exception) -> JSONResponse:
        down = dependency_down(exc)
        if down is None:  # a DBAPIError that is not a lost connection: a bug, the 500 below
            return await _unexpected(request, exc)
        # The database or Redis went away: 503 naming it (counted by _refused), never a 500.
        log.warning("%s %s: %s", request.method, request.url.path, down)
        return await _refused(request, down)

    for cls in DEPENDENCY_ERRORS:
        app.add_exception_handler(cls, _dependency)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Last resort: the tests show no request reaches this, but a client still gets the
        # error contract's shape rather than a bare text 500.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(status_code=500, content={"detail": "internal server error"})

    for module in (health, metrics, models, gallery, search):
        app.include_router(module.router)
    try:
        from service.api.routes import upgrade
    except ImportError:  # the upgrade routes are built in a separate package of work
        log.debug("service.api.routes.upgrade not present; /upgrade is not served")
    else:
        app.include_router(upgrade.router)
        app.include_router(upgrade.history_router)

    per_image = settings.max_upload_bytes
    limits = {  # the most body bytes a request to each route may send; any other route: a JSON body
        "/search": per_image + MULTIPART_OVERHEAD,
        "/gallery": per_image * settings.max_images_per_request + MULTIPART_OVERHEAD,
        "/models": models.MAX_CHECKPOINT_BYTES + models.MAX_METADATA_BYTES + MULTIPART_OVERHEAD,
    }

    def limit_of(scope: Scope) -> int:
        if scope["method"] != "POST":
            return DEFAULT_BODY_LIMIT
        return limits.get(scope["path"].rstrip("/") or "/", DEFAULT_BODY_LIMIT)

    app.add_middleware(
        Admission,
        is_admin=admin_routes(app.openapi),
        limit_of=limit_of,
        token=settings.admin_token,
    )
    # The outermost: it counts Admission's refusals too.
    app.add_middleware(HttpMetrics, template_of=openapi_templates(app.openapi))
    return app
