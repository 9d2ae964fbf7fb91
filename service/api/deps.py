"""FastAPI dependencies: the per-app objects (settings, serving state, Redis, image store), a
database session, and the admin check attached to every route that mutates."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

import redis as redis_lib
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.api.admission import admin_refusal
from service.api.serving import Serving
from service.db.session import read_scope
from service.imagestore import ImageStore
from service.settings import Settings


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_serving(request: Request) -> Serving:
    return request.app.state.serving


def get_redis(request: Request) -> redis_lib.Redis:
    return request.app.state.redis


def get_image_store(request: Request) -> ImageStore:
    return request.app.state.image_store


def get_session(settings: Annotated[Settings, Depends(get_app_settings)]) -> Iterator[Session]:
    """A read-only session (``read_scope``) for the routes that only read. A route that writes
    opens its own unit of work (``service.indexport.unit_of_work``): its change must be committed
    and published *before* it answers, so nothing is left to the dependency's exit."""
    with read_scope(settings.sqlalchemy_url) as session:
        yield session


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
ServingDep = Annotated[Serving, Depends(get_serving)]
RedisDep = Annotated[redis_lib.Redis, Depends(get_redis)]
ImageStoreDep = Annotated[ImageStore, Depends(get_image_store)]
SessionDep = Annotated[Session, Depends(get_session)]

_bearer = HTTPBearer(auto_error=False, description="HOTREFRESH_ADMIN_TOKEN")


def require_admin(
    request: Request,
    settings: SettingsDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The admin check of a route, the same one the admission middleware runs before any body is
    read (``service.api.admission.admin_refusal``). The bearer dependency is what marks the route
    as an admin one in OpenAPI, which is how the middleware finds it."""
    refusal = admin_refusal(request.headers.get("authorization"), settings.admin_token)
    if refusal is not None:
        raise refusal


AdminDep = Depends(require_admin)
