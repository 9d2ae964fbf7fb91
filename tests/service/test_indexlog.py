"""Index-log replicas (real Redis stream, real SQL): replicas that follow the log end identical to
SQL and to each other under a stream of changes; one that fell behind the stream's retention, or
whose stream Redis lost, reloads from SQL; replaying entries is idempotent."""

from __future__ import annotations

import numpy as np
import pytest
import redis as redis_lib

from service import indexlog
from service.api.serving import Serving
from service.api.serving.replica import Replica
from service.db.session import session_scope
from service.metrics import GALLERY_VECTORS
from service.repositories import items as item_repo
from service.settings import Settings
from tests.utils.writer import Writer, catch_up, replica_state, sql_truth


def replica(settings: Settings, r: redis_lib.Redis) -> Serving:
    s = Serving(settings, r)
    s.load()
    return s


def test_replicas_follow_a_stream_of_changes_and_match_sql(service_settings: Settings, r) -> None:
    w = Writer(service_settings, r)
    w.switch("old")
    w.add(30, "old")
    a = replica(service_settings, r)  # loaded now, follows from here
    w.add(10, "old")
    b = replica(service_settings, r)  # loaded later
    catch_up(a, b)
    assert replica_state(a) == replica_state(b) == sql_truth(service_settings)

    # An upgrade: switch, inserts stored under both models, backfill batches, deletes.
    w.switch("new")
    rng = np.random.default_rng(1)
    w.add(5, "new", also="old")
    for step in range(6):
        items, _ = sql_truth(service_settings)
        on_old = sorted(i for i, m in items.items() if m == "old")
        w.move([int(i) for i in rng.choice(on_old, size=min(4, len(on_old)), replace=False)], "new")
        w.delete([int(rng.choice(list(items)))])
        if step % 2:
            catch_up(a)  # a applies as it goes, b all at the end
    catch_up(a, b)
    truth = sql_truth(service_settings)
    assert replica_state(a) == replica_state(b) == truth
    assert set(truth[0].values()) == {"old", "new"}
    assert truth[1] == "new"

    # Rollback: every item back on old without re-encoding (parked vectors), inserts made during
    # the upgrade (no parked old vector in the index) fetched from SQL.
    w.rollback("old")
    catch_up(a, b)
    assert replica_state(a) == replica_state(b) == sql_truth(service_settings)
    assert set(sql_truth(service_settings)[0].values()) == {"old"}

    # Upgrade again to the end, then commit: the old segment is gone everywhere.
    w.switch("new")
    items, _ = sql_truth(service_settings)
    w.move(sorted(items), "new")
    w.commit("old")
    catch_up(a, b)
    assert replica_state(a) == replica_state(b) == sql_truth(service_settings)
    assert a.status().counts == b.status().counts == {"new": len(items)}
    assert a.status().reloads == b.status().reloads == 1  # followed the log, never fell back to a reload


def test_entries_are_idempotent(service_settings: Settings, r) -> None:
    w = Writer(service_settings, r)
    w.switch("old")
    ids = w.add(8, "old")
    a = Replica(service_settings, r)  # the in-process adapter itself: its entries, applied again
    a.load()
    w.move(ids[:4], "new")
    w.delete(ids[4:5])
    catch_up(a)
    once = replica_state(a)
    for entry in indexlog.read_after(r, service_settings, "0-0"):  # the whole log again
        a.apply(entry)
    assert replica_state(a) == once == sql_truth(service_settings)


def test_replica_behind_retention_reloads_from_sql(service_settings: Settings, r) -> None:
    settings = service_settings.model_copy(update={"index_log_maxlen": 100})
    w = Writer(settings, r)
    w.switch("old")
    w.add(5, "old")
    a = replica(settings, r)
    b = replica(settings, r)  # keeps up, so trimming never costs it a reload
    reloads = a.status().reloads
    for n in range(400):  # far past MAXLEN ~100: the stream trims entries a never read
        w.add(1, "old")
        if n % 40 == 0:
            catch_up(b)
    catch_up(b)
    assert b.status().reloads == 1 and replica_state(b) == sql_truth(settings)
    info = indexlog.stream_info(r, settings)
    st = a.status()
    assert indexlog.missed_entries(info, st.position, st.ordinal), "precondition: the stream was trimmed"
    assert r.xlen(indexlog.stream_key(settings)) < 400
    assert a.poll() == -1
    assert a.status().reloads == reloads + 1
    assert replica_state(a) == sql_truth(settings)
    assert len(a.items()) == 405


def test_replica_reloads_when_redis_lost_the_stream(service_settings: Settings, r) -> None:
    w = Writer(service_settings, r)
    w.switch("old")
    ids = w.add(6, "old")
    a = replica(service_settings, r)
    # Redis restarted empty: the stream and its epoch are gone, and changes made meanwhile were
    # committed to SQL with their entries lost.
    r.delete(indexlog.stream_key(service_settings), indexlog.epoch_key(service_settings))
    with session_scope(service_settings.sqlalchemy_url) as s:
        for item in item_repo.get_items_by_ids(s, ids[:2]):
            item_repo.delete_item(s, item)
    w.add(3, "old")  # a new stream with a new epoch
    assert a.poll() == -1
    assert replica_state(a) == sql_truth(service_settings)
    assert len(a.items()) == 7
    assert a.poll() == 0  # and follows the new stream from there


def test_follower_thread_and_gauges(service_settings: Settings, r) -> None:
    import time

    w = Writer(service_settings, r)
    w.switch("old")
    w.add(4, "old")
    a = Serving(service_settings, r)
    a.start()
    try:
        assert a.wait_ready(30)
        w.add(3, "old")
        deadline = time.monotonic() + 20
        while len(a.items()) < 7 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert replica_state(a) == sql_truth(service_settings)
        assert GALLERY_VECTORS.labels(model="old")._value.get() == 7
    finally:
        a.stop()


def test_follower_recovers_from_a_failed_apply_by_reloading(
    service_settings: Settings, r, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from service.api.serving import replica as replica_module

    w = Writer(service_settings, r)
    w.switch("old")
    w.add(3, "old")
    a = Serving(service_settings, r)
    original = replica_module.item_repo.get_item_states
    calls = {"n": 0}

    def flaky(session, ids):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("injected failure while applying an entry")
        return original(session, ids)

    monkeypatch.setattr(replica_module.item_repo, "get_item_states", flaky)
    a.start()
    try:
        assert a.wait_ready(30)
        w.add(2, "old")
        deadline = time.monotonic() + 30
        while replica_state(a) != sql_truth(service_settings) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert replica_state(a) == sql_truth(service_settings)
        assert calls["n"] >= 1 and a.status().reloads >= 2  # the failure led to a reload from SQL
    finally:
        a.stop()
