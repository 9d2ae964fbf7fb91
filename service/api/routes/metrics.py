"""Prometheus exposition, aggregated over every process of this replica in multiprocess mode."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse
from sqlalchemy.exc import SQLAlchemyError

from service.api.deps import SettingsDep
from service.metrics import render_latest
from service.upgrade import gauges

log = logging.getLogger(__name__)

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(settings: SettingsDep) -> Response:
    try:
        # Series this replica's processes set for an upgrade that has since ended are not scraped.
        gauges.drop_ended(settings.sqlalchemy_url)
    except SQLAlchemyError as exc:  # the database away: monitoring still answers, with what it has
        log.debug("metrics: could not look at the upgrades' states: %s", exc)
    body, content_type = render_latest()
    return Response(content=body, media_type=content_type)
