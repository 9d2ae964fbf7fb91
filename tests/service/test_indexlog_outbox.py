"""The index log's outbox (real SQL on SQLite and PostgreSQL, real Redis), as the in-process
replicated backend uses it: a change is staged in the unit of work's transaction, so a write
whose Redis append fails after the commit, or whose process dies before it, still reaches every
replica through a follower's relay; a rolled-back change stages nothing; a late rollback or
commit goes out as one reset."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
import redis as redis_lib
from prometheus_client import REGISTRY
from sqlalchemy import select

from cli.launcher import free_port
from service import indexlog
from service.api.serving import Serving
from service.api.serving.replica import Replica
from service.db.schema import GalleryItem, IndexLogOutbox
from service.db.session import session_scope
from service.indexport import Change, LogPublisher, UnitOfWork, relay, unit_of_work
from service.repositories import items as item_repo
from service.settings import Settings
from tests.utils.writer import Writer, catch_up, replica_state, sql_truth, unit

pytestmark = [pytest.mark.integration]


@pytest.fixture
def refusing_redis() -> Iterator[redis_lib.Redis]:
    """A client of a port nothing listens on: every call fails with a real connection error."""
    client = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    yield client
    client.close()


def staged_rows(settings: Settings) -> list[tuple[str, str | None, str]]:
    with session_scope(settings.sqlalchemy_url) as s:
        return [(o.op, o.model, o.ids) for o in s.scalars(select(IndexLogOutbox).order_by(IndexLogOutbox.id))]


def add_items(uow: UnitOfWork, n: int, prefix: str) -> list[int]:
    """What POST /gallery does: the items and their change in one unit of work."""
    rng = np.random.default_rng(len(prefix) + n)
    items = [item_repo.NewItem(f"{prefix}{k}", None, "0" * 64, {"old": unit(rng, 1)[0]}) for k in range(n)]
    ids = [row.id for row in item_repo.add_items(uow.session, items, active_model="old")]
    uow.record(Change.add("old", ids))
    return ids


def stage(settings: Settings, *changes: Change) -> None:
    """Changes left staged, as by a writer whose publish failed (nothing listens on this port)."""
    dead = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    try:
        with unit_of_work(settings, dead) as uow:
            for change in changes:
                uow.record(change)
    finally:
        dead.close()


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_published_entry_leaves_nothing_staged(service_settings: Settings, r: redis_lib.Redis) -> None:
    Writer(service_settings, r).switch("old")
    before = indexlog.stream_info(r, service_settings).last_id
    with unit_of_work(service_settings, r) as uow:
        ids = add_items(uow, 3, "p")
        uow.session.flush()
        assert [row[0] for row in uow.session.execute(select(IndexLogOutbox.op))] == ["add"]  # staged in it
        assert indexlog.read_after(r, service_settings, before) == []  # not published before the commit
    entries = indexlog.read_after(r, service_settings, before)
    assert [(e.op, e.model, e.ids) for e in entries] == [("add", "old", ids)]
    assert staged_rows(service_settings) == []


def test_an_entry_redis_refused_reaches_every_replica_through_a_followers_relay(
    service_settings: Settings, r: redis_lib.Redis, refusing_redis: redis_lib.Redis
) -> None:
    w = Writer(service_settings, r)
    w.switch("old")
    w.add(5, "old")
    a = Serving(service_settings, r)
    a.load()

    with unit_of_work(service_settings, refusing_redis) as uow:  # the publish fails: logged, not raised
        ids = add_items(uow, 4, "late")
    assert [row[0] for row in staged_rows(service_settings)] == ["add"]
    catch_up(a)
    assert not set(ids) & set(a.items())  # nothing in the stream: replica a cannot know

    # A relay that cannot reach Redis either keeps the rows for the next round.
    with pytest.raises(redis_lib.ConnectionError):
        relay(service_settings, LogPublisher(service_settings, refusing_redis), 0.0)
    assert Replica(service_settings, refusing_redis).relay() == 0
    assert [row[0] for row in staged_rows(service_settings)] == ["add"]

    # Another replica's follower thread publishes it; replica a (which never relays) converges.
    b = Serving(service_settings.model_copy(update={"index_log_relay_s": 0.2}), r)
    b.start()
    try:
        wait_for(lambda: staged_rows(service_settings) == [])
        catch_up(a)
        assert replica_state(a) == sql_truth(service_settings)
        assert set(ids) <= set(a.items())
        wait_for(lambda: replica_state(b) == sql_truth(service_settings))
    finally:
        b.stop()


def test_young_entries_are_left_to_their_writer(service_settings: Settings, r: redis_lib.Redis) -> None:
    Writer(service_settings, r).switch("old")
    stage(service_settings, Change.add("old", [1, 2]))
    assert relay(service_settings, LogPublisher(service_settings, r), 60.0) == 0
    assert [row[0] for row in staged_rows(service_settings)] == ["add"]


def test_a_change_rolled_back_stages_and_publishes_nothing(service_settings: Settings, r: redis_lib.Redis) -> None:
    before = indexlog.stream_info(r, service_settings).last_id
    with pytest.raises(RuntimeError), unit_of_work(service_settings, r) as uow:
        add_items(uow, 1, "never")
        raise RuntimeError("the request failed after staging")
    assert staged_rows(service_settings) == []
    assert indexlog.read_after(r, service_settings, before) == []
    with session_scope(service_settings.sqlalchemy_url) as s:
        assert s.scalar(select(GalleryItem.id).where(GalleryItem.external_id == "never0")) is None

    with pytest.raises(ValueError, match="unknown index change"), unit_of_work(service_settings, r) as uow:
        uow.record(Change("upsert", "old", (1,)))
    assert staged_rows(service_settings) == []


def test_a_late_rollback_or_commit_goes_out_as_one_reset(
    service_settings: Settings, r: redis_lib.Redis, refusing_redis: redis_lib.Redis
) -> None:
    w = Writer(service_settings, r)
    w.switch("old")
    w.add(6, "old")
    a = Serving(service_settings, r)
    a.load()
    reloads = a.status().reloads
    before = indexlog.stream_info(r, service_settings).last_id
    with unit_of_work(service_settings, refusing_redis) as uow:  # published late, as it is
        moved = add_items(uow, 2, "m")
    stage(service_settings, Change.rollback("old"))
    stage(service_settings, Change.commit("new"))

    relayed = REGISTRY.get_sample_value("hotrefresh_index_log_relayed_total") or 0.0
    assert relay(service_settings, LogPublisher(service_settings, r), 0.0) == 3
    assert REGISTRY.get_sample_value("hotrefresh_index_log_relayed_total") == relayed + 3
    entries = indexlog.read_after(r, service_settings, before)
    assert [(e.op, e.ids) for e in entries] == [("add", moved), ("reset", [])]
    assert staged_rows(service_settings) == []
    catch_up(a)
    assert a.status().reloads == reloads + 1
    assert replica_state(a) == sql_truth(service_settings)
