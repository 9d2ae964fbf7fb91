"""``POST /search``: encode the query image with the query model, search every segment of this
replica's mixed index with the paper's plan (one embedding, raw scores), merge to one top-k."""

from __future__ import annotations

import time

from fastapi import APIRouter, File, Query, UploadFile

from service.api.deps import ServingDep, SettingsDep
from service.api.schemas import SearchOut, SearchResult, error_responses, form_example
from service.errors import ServiceError
from service.images import read_limited
from service.metrics import SEARCH_REQUESTS, SEARCH_SECONDS

router = APIRouter(tags=["search"])

MAX_K = 1000


@router.post(
    "/search",
    response_model=SearchOut,
    responses=error_responses(404, 409, 413, 422, 503),
    openapi_extra=form_example(image="query.png"),
)
def search(
    settings: SettingsDep,
    serving: ServingDep,
    image: UploadFile = File(..., description="The query image."),
    k: int = Query(10, ge=1, le=MAX_K, description="How many results."),
) -> SearchOut:
    started = time.perf_counter()
    code = 500
    try:
        data = read_limited(image.file, settings.max_upload_bytes, "query image")
        model, hits = serving.search(data, k)  # one decode: a clear 4xx for bad bytes
        code = 200
        return SearchOut(
            query_model=model,
            results=[SearchResult(external_id=e, score=s, model=m) for e, s, m in hits],
        )
    except ServiceError as e:
        code = e.status
        raise
    finally:
        SEARCH_SECONDS.observe(time.perf_counter() - started)
        SEARCH_REQUESTS.labels(status=str(code)).inc()
