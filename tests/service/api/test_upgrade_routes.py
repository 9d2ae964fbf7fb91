"""``/upgrade`` over HTTP (the app in-process, its real lifespan): every refusal of docs/design.md (invariant 5) with
its status and nothing changed; the state rules' 409s; rollback through the API."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service.db.schema import Upgrade
from service.db.session import session_scope
from service.registry import EncoderCache, register
from service.repositories import catalog
from tests.utils.env import ADMIN_TOKEN

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def upgrades(url: str) -> int:
    with session_scope(url) as s:
        return int(s.scalar(select(func.count()).select_from(Upgrade)) or 0)


def test_upgrade_requests_refused_and_state_rules(make_gallery) -> None:
    from service.api.app import create_app
    from tests.utils.checkpoints import make_tiny_checkpoint

    g = make_gallery(n=20)
    url = g.settings.sqlalchemy_url
    newer = g.settings.models_path / "newer.pt"
    make_tiny_checkpoint(newer, "newer", seed=5, compatible_with="new")  # compatible with new, not old
    with session_scope(url) as s:
        register(s, g.settings, EncoderCache("cpu"), newer, uploaded=False)

    with TestClient(create_app(g.settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/upgrade").status_code == 404  # none yet
        cases = [
            ({"model": "new"}, {}, 401),
            ({"model": "new"}, {"Authorization": "Bearer wrong"}, 403),
            ({"model": "nope"}, ADMIN, 404),
            ({"model": "old"}, ADMIN, 422),  # already the gallery model
            ({"model": "newer", "plan": "paper"}, ADMIN, 422),  # the paper's plan needs a compatible model
            ({"model": "new", "strategy": "best"}, ADMIN, 422),
            ({"model": "new", "batch_size": 0}, ADMIN, 422),
            ({"model": "new", "nfr_guardrail": 1.5}, ADMIN, 422),
            ({"model": "new", "batch_size": True}, ADMIN, 422),  # strict types: no true for 1
            ({"model": "new", "batch_size": "8"}, ADMIN, 422),
            ({"model": "new", "nfr_guardrail": True}, ADMIN, 422),
            ({"model": "new", "items_per_second": 0}, ADMIN, 422),
            ({"model": "new", "items_per_second": -5.0}, ADMIN, 422),
            ({"model": "new", "items_per_second": True}, ADMIN, 422),
            ({"model": "new", "items_per_second": "40"}, ADMIN, 422),
            ({"model": "new", "vector_only": True}, ADMIN, 422),  # new carries no map from old
            ({"model": "new", "vector_only": 1}, ADMIN, 422),  # strict: no 1 for true
            ({}, ADMIN, 422),
        ]
        for body, headers, status in cases:
            r = client.post("/upgrade", json=body, headers=headers)
            assert r.status_code == status, (body, r.text)
            assert isinstance(r.json()["detail"], str)
        assert upgrades(url) == 0
        with session_scope(url) as s:
            assert catalog.get_serving_state(s).query_model == "old"

        r = client.post("/upgrade", json={"model": "new", "strategy": "entropy"}, headers=ADMIN)
        assert r.status_code == 202, r.text
        uid = r.json()["id"]
        assert r.json() == {"id": uid, "state": "scoring", "total": 20}
        with session_scope(url) as s:
            serving = catalog.get_serving_state(s)
            assert (serving.query_model, serving.gallery_model) == ("new", "new")
        assert client.post("/upgrade", json={"model": "new"}, headers=ADMIN).status_code == 409
        assert upgrades(url) == 1

        u = client.get(f"/upgrade/{uid}").json()
        assert u["state"] == "scoring" and u["nfr"] is None and u["failures"] == []
        assert u["fraction"] is None and u["done"] == u["mapped"] == 0  # nothing moved; not "no tasks, so 100%"
        assert client.get("/upgrade").json()["id"] == uid
        assert client.get("/upgrade/999").status_code == 404
        for action in ("pause", "resume", "commit"):
            r = client.post(f"/upgrade/{uid}/{action}", headers=ADMIN)
            assert r.status_code == 409, (action, r.text)
        assert client.post(f"/upgrade/{uid}/rollback").status_code == 401
        assert client.post("/upgrade/999/rollback", headers=ADMIN).status_code == 404
        r = client.post(f"/upgrade/{uid}/rollback", headers=ADMIN)
        assert r.status_code == 200 and r.json() == {"id": uid, "state": "rolled_back"}
        with session_scope(url) as s:
            serving = catalog.get_serving_state(s)
            assert (serving.query_model, serving.gallery_model) == ("old", "old")
        for action in ("pause", "resume", "cancel", "rollback", "commit"):
            assert client.post(f"/upgrade/{uid}/{action}", headers=ADMIN).status_code == 409
        assert client.get(f"/upgrade/{uid}/failures").json() == []


def test_throttle_set_at_start_changed_live_and_refused_with_nothing_changed(make_gallery) -> None:
    """``items_per_second`` on ``POST /upgrade`` and ``POST /upgrade/{id}/throttle``: SQL holds
    the rate, Redis the copy the workers' bucket reads; every refusal leaves both as they were."""
    import redis as redis_lib

    from service import keys
    from service.api.app import create_app
    from service.repositories import upgrades as upgrade_repo

    g = make_gallery(n=20)
    url = g.settings.sqlalchemy_url
    r = redis_lib.Redis.from_url(g.settings.effective_redis_url)

    def stored(uid: int) -> tuple[float | None, bytes | None]:
        with session_scope(url) as s:
            rate = upgrade_repo.throttle_of(s, uid)
        return rate, r.get(keys.throttle_rate(g.settings, uid))

    with TestClient(create_app(g.settings)) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        resp = client.post("/upgrade", json={"model": "new", "items_per_second": 40}, headers=ADMIN)
        assert resp.status_code == 202, resp.text
        uid = resp.json()["id"]
        view = client.get(f"/upgrade/{uid}").json()
        assert view["items_per_second"] == 40.0 and view["recent_items_per_s"] is None  # no worker took any
        assert stored(uid) == (40.0, None)  # workers read SQL when Redis has no copy

        path = f"/upgrade/{uid}/throttle"
        refusals: list[tuple[dict | bytes, dict[str, str], int]] = [
            ({"items_per_second": 80}, {}, 401),
            ({"items_per_second": 80}, {"Authorization": "Bearer wrong"}, 403),
            ({"items_per_second": 0}, ADMIN, 422),
            ({"items_per_second": -1.5}, ADMIN, 422),
            (b'{"items_per_second": NaN}', ADMIN, 422),  # Python's JSON parser takes NaN
            (b'{"items_per_second": Infinity}', ADMIN, 422),
            ({"items_per_second": True}, ADMIN, 422),
            ({"items_per_second": "80"}, ADMIN, 422),
            ({}, ADMIN, 422),  # lifting the throttle is said (null), never implied
        ]
        for body, headers, status in refusals:
            if isinstance(body, bytes):
                resp = client.post(path, content=body, headers={**headers, "Content-Type": "application/json"})
            else:
                resp = client.post(path, json=body, headers=headers)
            assert resp.status_code == status, (body, resp.text)
            assert isinstance(resp.json()["detail"], str)
        assert stored(uid) == (40.0, None)
        resp = client.post("/upgrade/999/throttle", json={"items_per_second": 80}, headers=ADMIN)
        assert resp.status_code == 404, resp.text

        resp = client.post(path, json={"items_per_second": 80}, headers=ADMIN)
        assert resp.status_code == 200, resp.text
        assert resp.json() == {"id": uid, "state": "scoring", "items_per_second": 80.0}
        assert stored(uid) == (80.0, b"80.0")
        assert client.get("/upgrade").json()["items_per_second"] == 80.0

        resp = client.post(path, json={"items_per_second": None}, headers=ADMIN)
        assert resp.status_code == 200 and resp.json()["items_per_second"] is None, resp.text
        assert stored(uid) == (None, b"0")  # unlimited
        assert client.get(f"/upgrade/{uid}").json()["items_per_second"] is None
        client.post(path, json={"items_per_second": 12.5}, headers=ADMIN)

        assert client.post(f"/upgrade/{uid}/rollback", headers=ADMIN).status_code == 200
        resp = client.post(path, json={"items_per_second": 500}, headers=ADMIN)
        assert resp.status_code == 409, resp.text
        assert "rolled_back" in resp.json()["detail"] and "backfill is over" in resp.json()["detail"]
        assert stored(uid) == (12.5, b"12.5")
    r.close()
