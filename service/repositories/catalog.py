"""Registered models and the serving state: the one row that says which model embeds the
gallery's new items and which embeds queries."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.schema import ModelRow, ServingState

SERVING_STATE_ID = 1


def get_model(session: Session, name: str) -> ModelRow | None:
    return session.scalar(select(ModelRow).where(ModelRow.name == name))


def list_models(session: Session) -> list[ModelRow]:
    return list(session.scalars(select(ModelRow).order_by(ModelRow.id)))


def lineage(models: dict[str, ModelRow], name: str) -> list[str]:
    """``name``, the model it declares compatibility with, that one's, ... back to the first
    (registration refuses a ``compatible_with`` that is not registered, so the chain is closed;
    a cycle, which registration cannot make, would stop at its first repeat)."""
    chain: list[str] = []
    current: str | None = name
    while current is not None and current not in chain and current in models:
        chain.append(current)
        current = models[current].compatible_with
    return chain


def add_model(session: Session, row: ModelRow) -> ModelRow:
    session.add(row)
    session.flush()
    return row


def peek_serving_state(session: Session) -> ServingState | None:
    """The serving-state row if it exists; a pure read, for read-only transactions."""
    return session.get(ServingState, SERVING_STATE_ID)


def get_serving_state(session: Session) -> ServingState:
    """The single serving-state row, created empty on first use."""
    state = peek_serving_state(session)
    if state is None:
        state = ServingState(id=SERVING_STATE_ID, gallery_model=None, query_model=None)
        session.add(state)
        session.flush()
    return state


def lock_serving_state(session: Session) -> ServingState:
    """The serving-state row, locked until the transaction ends (PostgreSQL ``FOR UPDATE``; SQLite's
    ``BEGIN IMMEDIATE`` already serialises writers): two upgrade starts queue here, so both can
    never pass the "none running" check."""
    get_serving_state(session)
    state = session.scalar(select(ServingState).where(ServingState.id == SERVING_STATE_ID).with_for_update())
    assert state is not None
    return state


def set_plan(session: Session, plan: dict | None) -> ServingState:
    """The query plan every replica serves (``service.upgrade.plans``); None: no plan."""
    state = get_serving_state(session)
    state.plan = plan
    session.flush()
    return state


def set_serving_state(
    session: Session, *, gallery_model: str | None = None, query_model: str | None = None
) -> ServingState:
    """Set whichever of the two models is given; ``None`` leaves that one unchanged."""
    state = get_serving_state(session)
    if gallery_model is not None:
        state.gallery_model = gallery_model
    if query_model is not None:
        state.query_model = query_model
    session.flush()
    return state
