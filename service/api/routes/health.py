"""Liveness and readiness: alive as soon as the process serves HTTP, ready once its index replica
has been loaded from SQL (a load balancer must not send searches to an empty replica) and while
the database and Redis answer: 503 naming the one that does not (``service.errors``), 200 again
by itself when it is back. Searches keep being answered from the replica meanwhile."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import text

from service.api.deps import RedisDep, ServingDep, SessionDep
from service.api.schemas import HealthOut, ReadyOut, error_responses

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=HealthOut)
def healthz() -> HealthOut:
    return HealthOut()


@router.get("/readyz", response_model=ReadyOut, responses=error_responses(503))
def readyz(serving: ServingDep, session: SessionDep, redis: RedisDep) -> ReadyOut:
    serving.require_ready()  # 503 "the index is still loading"
    session.execute(text("SELECT 1"))  # a lost connection is a 503 "database unavailable"
    redis.ping()  # ... and "redis unavailable"
    st = serving.status()
    return ReadyOut(
        query_model=st.query_model,
        counts=st.counts,
        log_position=st.position,
        loaded_from=st.loaded_from,
        plan=None if st.plan is None else {"name": st.plan.name, "version": st.plan.version},
    )
