"""The unit of work (``service.indexport.unit_of_work``), on real SQLite and PostgreSQL and a
real Redis: the SQL transaction commits with its changes staged in the outbox, and only then do
the changes go to the publisher; nothing is published when the transaction rolls back; a
publisher that fails leaves them staged for the relay; the lease-backed path (no outbox) raises
instead, so its caller does not ack."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import redis as redis_lib
from sqlalchemy import func, select

from cli.launcher import free_port
from service import indexlog
from service.db.schema import GalleryItem, IndexLogOutbox
from service.db.session import read_scope
from service.indexport import Change, LogPublisher, relay, unit_of_work
from service.repositories import items as item_repo
from service.settings import Settings
from tests.utils.writer import unit

pytestmark = [pytest.mark.integration]


class SqlWitness:
    """A publisher that, when handed changes, reads what SQL holds at that moment from another
    connection: what it sees is what any backend's publisher would see."""

    def __init__(self, settings: Settings) -> None:
        self.url = settings.sqlalchemy_url
        self.seen: list[tuple[Change, int, int]] = []  # (change, its items in SQL, outbox rows)

    def publish(self, changes: Sequence[Change], *, late: bool = False) -> None:
        with read_scope(self.url) as s:
            for c in changes:
                items = s.scalar(select(func.count()).where(GalleryItem.id.in_(c.ids))) or 0
                rows = s.scalar(select(func.count()).select_from(IndexLogOutbox)) or 0
                self.seen.append((c, items, rows))


def _new_items(uow, n: int, prefix: str) -> list[int]:
    rng = np.random.default_rng(n)
    items = [item_repo.NewItem(f"{prefix}{k}", None, "0" * 64, {"old": unit(rng, 1)[0]}) for k in range(n)]
    return [row.id for row in item_repo.add_items(uow.session, items, active_model="old")]


def _outbox(settings: Settings) -> list[str]:
    with read_scope(settings.sqlalchemy_url) as s:
        return list(s.scalars(select(IndexLogOutbox.op).order_by(IndexLogOutbox.id)))


@pytest.fixture
def dead_redis():
    client = redis_lib.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5)
    yield client
    client.close()


def test_changes_are_published_after_the_commit_with_their_outbox_rows(service_settings: Settings, r) -> None:
    witness = SqlWitness(service_settings)
    with unit_of_work(service_settings, r, publisher=witness) as uow:
        ids = _new_items(uow, 3, "a")
        uow.record(Change.add("old", ids))
        uow.record(Change.switch("old"))
        assert witness.seen == []  # nothing goes out inside the transaction
    # When the publisher ran, the items and both staged rows were committed and visible.
    assert witness.seen == [(Change.add("old", ids), 3, 2), (Change.switch("old"), 0, 2)]
    assert uow.changes == [Change.add("old", ids), Change.switch("old")]
    assert _outbox(service_settings) == []  # dropped once published


def test_a_rolled_back_unit_publishes_nothing(service_settings: Settings, r) -> None:
    witness = SqlWitness(service_settings)
    with pytest.raises(RuntimeError), unit_of_work(service_settings, r, publisher=witness) as uow:
        uow.record(Change.add("old", _new_items(uow, 2, "b")))
        raise RuntimeError("refused after the change was recorded")
    assert witness.seen == [] and _outbox(service_settings) == []


def test_a_failed_publish_leaves_the_change_staged_for_the_relay(service_settings: Settings, r, dead_redis) -> None:
    before = indexlog.stream_info(r, service_settings).last_id
    with unit_of_work(service_settings, dead_redis) as uow:  # the real client's error, logged
        ids = _new_items(uow, 2, "c")
        uow.record(Change.add("old", ids))
    assert _outbox(service_settings) == ["add"]
    with read_scope(service_settings.sqlalchemy_url) as s:
        assert len(item_repo.get_items_by_ids(s, ids)) == 2  # the write itself succeeded
    assert relay(service_settings, LogPublisher(service_settings, r), 0.0) == 1
    entries = indexlog.read_after(r, service_settings, before)
    assert [(e.op, e.model, e.ids) for e in entries] == [("add", "old", ids)]
    assert _outbox(service_settings) == []


def test_without_the_outbox_a_failed_publish_raises_after_the_commit(service_settings: Settings, dead_redis) -> None:
    """The backfill's path: its lease holds the change, so a failure must reach the caller (which
    then does not ack), and nothing is staged."""
    with pytest.raises(redis_lib.ConnectionError), unit_of_work(service_settings, dead_redis, outbox=False) as uow:
        ids = _new_items(uow, 2, "d")
        uow.record(Change.move("old", ids))
    assert _outbox(service_settings) == []
    with read_scope(service_settings.sqlalchemy_url) as s:
        assert len(item_repo.get_items_by_ids(s, ids)) == 2  # committed before the publish


def test_a_unit_without_changes_publishes_nothing(service_settings: Settings, dead_redis) -> None:
    with unit_of_work(service_settings, dead_redis, outbox=False) as uow:
        _new_items(uow, 1, "e")
    assert uow.changes == [] and _outbox(service_settings) == []
