"""Prometheus exposition, aggregated over every process of this replica in multiprocess mode."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import PlainTextResponse

from service.metrics import render_latest

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=PlainTextResponse)
def metrics() -> Response:
    body, content_type = render_latest()
    return Response(content=body, media_type=content_type)
