"""``GET /upgrades`` over HTTP (the app in-process, its real lifespan, real SQL and Redis): newest
first, paged by the ``next`` cursor, filtered by state, each upgrade as ``GET /upgrade/{id}``
shows it, finished upgrades read from their rows without counting their tasks, and bad
parameters refused with a 422 that says why."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.utils.gallery import Gallery
from tests.utils.upgrade import make_history

pytestmark = pytest.mark.integration


@contextmanager
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine of this process runs inside the block."""
    seen: list[str] = []

    def record(_conn, _cursor, statement, _params, _context, _many) -> None:  # type: ignore[no-untyped-def]
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(Engine, "before_cursor_execute", record)


def _history(make_gallery) -> tuple[Gallery, dict[str, int]]:
    g = make_gallery(n=24)
    _ctx, ids = make_history(g)
    return g, ids


def _ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.05)


def test_history_pages_newest_first_filters_by_state_and_matches_each_view(make_gallery) -> None:
    from service.api.app import create_app

    g, ids = _history(make_gallery)
    newest_first = sorted(ids.values(), reverse=True)
    with TestClient(create_app(g.settings)) as client:
        _ready(client)
        whole = client.get("/upgrades").json()
        assert [u["id"] for u in whole["items"]] == newest_first and whole["next"] is None
        for u in whole["items"]:  # the same view as GET /upgrade/{id}, field for field
            one = client.get(f"/upgrade/{u['id']}").json()
            assert u == one
        by_id = {u["id"]: u for u in whole["items"]}
        assert by_id[ids["committed"]]["state"] == "committed"
        assert by_id[ids["committed"]]["done"] == 24 and by_id[ids["committed"]]["fraction"] == 1.0
        rolled = by_id[ids["rolled_back"]]
        assert rolled["state"] == "rolled_back" and rolled["done"] >= 8 and rolled["pending"] == 24 - rolled["done"]

        # Pages of 3 then 1, following the cursor; nothing repeated, nothing left out.
        first = client.get("/upgrades", params={"limit": 3}).json()
        assert [u["id"] for u in first["items"]] == newest_first[:3]
        assert first["next"] == newest_first[2]
        second = client.get("/upgrades", params={"limit": 3, "before": first["next"]}).json()
        assert [u["id"] for u in second["items"]] == newest_first[3:] and second["next"] is None

        for state, uid in ids.items():
            page = client.get("/upgrades", params={"state": state}).json()
            assert [u["id"] for u in page["items"]] == [uid], state
        assert client.get("/upgrades", params={"state": "paused"}).json() == {"items": [], "next": None}


def test_a_page_of_finished_upgrades_counts_no_tasks(make_gallery) -> None:
    """The transition into a finished state wrote the counts to the row; the history reads
    them there, while the running upgrade is still counted."""
    from service.api.app import create_app

    g, ids = _history(make_gallery)
    with TestClient(create_app(g.settings)) as client:
        _ready(client)
        with statements() as seen:
            page = client.get("/upgrades", params={"before": ids["running"]}).json()
        assert {u["state"] for u in page["items"]} == {"rolled_back", "cancelled", "committed"}
        assert not [s for s in seen if "backfill_tasks" in s], seen
        with statements() as seen:
            running = client.get("/upgrades", params={"state": "running"}).json()["items"][0]
        assert [s for s in seen if "backfill_tasks" in s]  # an active upgrade is counted live
        assert running["pending"] + running["done"] + running["failed"] == 24


def test_bad_parameters_are_refused_with_a_clear_422(make_gallery, client: TestClient) -> None:
    cases = [
        ({"state": "sleeping"}, "state"),
        ({"limit": 0}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"before": 0}, "before"),
        ({"before": 2**63}, "before"),
    ]
    for params, field in cases:
        r = client.get("/upgrades", params=params)
        assert r.status_code == 422, (params, r.text)
        assert r.json()["detail"].startswith(f"{field}:"), r.json()
    detail = client.get("/upgrades", params={"state": "sleeping"}).json()["detail"]
    assert "'sleeping'" in detail and "rolled_back" in detail and "running" in detail  # the valid values listed
    assert client.get("/upgrades").json() == {"items": [], "next": None}
