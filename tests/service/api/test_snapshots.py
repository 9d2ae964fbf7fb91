"""Restart from a snapshot: a replica saves its index and log position at shutdown; the next one
loads those arrays and replays only the log since, ending identical to SQL — and falls back to a
full SQL load whenever the snapshot could be missing something (log trimmed or lost, another
database, broken files)."""

from __future__ import annotations

import shutil

import pytest
from fastapi.testclient import TestClient

from service import indexlog
from service.api.serving import Serving
from service.settings import Settings
from tests.utils.images import synthetic_png
from tests.utils.wait import wait_caught_up, wait_ready
from tests.utils.writer import Writer, catch_up, replica_state, sql_truth


def test_restart_from_snapshot_plus_log(service_settings: Settings, r) -> None:
    w = Writer(service_settings, r)
    w.switch("old")
    ids = w.add(30, "old")
    a = Serving(service_settings, r)
    a.load()
    assert a.status().loaded_from == "sql"
    w.switch("new")
    w.move(ids[:10], "new")  # parked old vectors go into the snapshot too
    catch_up(a)
    a.save_snapshot()

    # While no replica runs: more inserts, moves, deletes.
    w.add(4, "new", also="old")
    w.move(ids[10:15], "new")
    w.delete(ids[20:22])

    b = Serving(service_settings, r)
    b.load()
    st = b.status()
    assert st.loaded_from == "snapshot" and st.reloads == 0
    catch_up(b)
    assert replica_state(b) == sql_truth(service_settings)
    assert b.status().parked.get("old") == 15  # rollback stays instant after a restart

    w.rollback("old")
    catch_up(b)
    assert replica_state(b) == sql_truth(service_settings)
    assert set(replica_state(b)[0].values()) == {"old"}


@pytest.mark.parametrize("spoil", ["trimmed", "redis lost the stream", "broken files"])
def test_unusable_snapshot_falls_back_to_sql(service_settings: Settings, r, spoil: str) -> None:
    settings = service_settings.model_copy(update={"index_log_maxlen": 100})
    w = Writer(settings, r)
    w.switch("old")
    w.add(5, "old")
    a = Serving(settings, r)
    a.load()
    path = a.save_snapshot()
    if spoil == "trimmed":
        for _ in range(400):
            w.add(1, "old")
    elif spoil == "redis lost the stream":
        r.delete(indexlog.stream_key(settings), indexlog.epoch_key(settings))
        w.add(2, "old")
    else:
        shutil.rmtree(path)
        w.add(2, "old")
    b = Serving(settings, r)
    b.load()
    assert b.status().loaded_from == "sql"
    assert replica_state(b) == sql_truth(settings)


def test_snapshot_of_another_database_is_not_used(service_settings: Settings, r, tmp_path) -> None:
    from service.db.migrate import upgrade_head

    w = Writer(service_settings, r)
    w.switch("old")
    w.add(3, "old")
    a = Serving(service_settings, r)
    a.load()
    a.save_snapshot()
    # Same data directory, same Redis prefix (so the same log epoch), another database.
    other = service_settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'other.db'}"})
    upgrade_head(other.sqlalchemy_url)
    b = Serving(other, r)
    b.load()
    assert b.status().loaded_from == "sql" and b.status().counts == {}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_app_writes_a_snapshot_at_shutdown_and_starts_from_it(
    service_settings: Settings, checkpoints: dict, admin_headers: dict
) -> None:
    from service.api.app import create_app

    with TestClient(create_app(service_settings)) as c:
        wait_ready(c)
        assert c.post("/models", data={"path": "old.pt"}, headers=admin_headers).status_code == 201
        files = [("image", (f"{j}.png", synthetic_png(j), "image/png")) for j in range(6)]
        assert (
            c.post(
                "/gallery", files=files, data={"external_id": [f"i{j}" for j in range(6)]}, headers=admin_headers
            ).status_code
            == 201
        )
        first = wait_caught_up(c, service_settings)
    with TestClient(create_app(service_settings)) as c:
        wait_ready(c)
        second = wait_caught_up(c, service_settings)
        assert second["loaded_from"] == "snapshot"
        assert second["counts"] == first["counts"] == {"old": 6}
        hits = c.post("/search", files={"image": ("q.png", synthetic_png(4), "image/png")}).json()["results"]
        assert hits[0]["external_id"] == "i4"
