"""A query plan registered from outside ``models/plans/`` (here, this test module) is requestable
through ``POST /upgrade``, fitted at the scoring run's checkpoint, and served by ``/search``: the
registry is the only place a plan has to be added. The toy plan scores every item still on the
old model with a calibration that puts it below every backfilled item, which no built-in plan
does, so the test fails if the served ranking is not the toy plan's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from models.plans import Calibration, FitInput, Plan, PlanSpec, register_plan, requestable, unregister_plan
from models.plans.registry import A
from service.db.session import session_scope
from service.repositories import items as item_repo
from service.upgrade.scoring import run_scoring
from tests.utils.env import ADMIN_TOKEN
from tests.utils.wait import wait_caught_up, wait_ready
from workers.context import WorkerContext
from workers.drain import drain

pytestmark = pytest.mark.integration
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SINK = 1000.0  # far above any unit-vector dot product: old items end up below every new one


class OldLast(Plan):
    name = "toy-old-last"
    summary = "every item still on the old model ranks after every backfilled one"

    def fit(self, data: FitInput) -> PlanSpec:
        return PlanSpec(self.name, old=Calibration(shift=SINK))

    def old_query(self, spec: PlanSpec, q_old: A | None, q_new: A) -> tuple[A, Calibration]:
        assert q_old is not None
        return q_old, spec.old


@pytest.fixture
def toy_plan() -> Iterator[str]:
    register_plan(OldLast)
    try:
        yield OldLast.name
    finally:
        unregister_plan(OldLast.name)


def test_the_registry_refuses_a_second_plan_of_one_name_and_the_choosers_name(toy_plan: str) -> None:
    assert toy_plan in requestable()
    with pytest.raises(ValueError, match="already registered"):
        register_plan(OldLast)

    class Auto(OldLast):
        name = "auto"

    with pytest.raises(ValueError, match="auto"):
        register_plan(Auto)


def test_a_plan_registered_by_a_test_is_served_through_search(make_gallery, toy_plan: str) -> None:
    from service.api.app import create_app

    g = make_gallery(n=40)
    g.settings.__dict__["batch_size"] = 16
    with TestClient(create_app(g.settings)) as client:
        wait_ready(client)
        schema = client.get("/openapi.json").json()["components"]["schemas"]["UpgradeIn"]["properties"]["plan"]
        assert toy_plan in schema["enum"]
        r = client.post("/upgrade", json={"model": g.new, "plan": toy_plan, "strategy": "random"}, headers=ADMIN)
        assert r.status_code == 202, r.text
        uid = r.json()["id"]
        ctx = WorkerContext.from_settings(g.settings)
        with session_scope(ctx.url) as s:
            model = ctx.encoders.get(s, g.new)
        assert run_scoring(g.settings, ctx.redis, uid, model, ctx.images)
        drain(ctx, uid, budget_s=0.0)  # one batch: 16 of the 40 items move
        ready = wait_caught_up(client, g.settings)
        assert ready["plan"]["name"] == toy_plan and ready["plan"]["version"] > 1  # fitted, not the start plan
        assert ready["counts"] == {g.old: 24, g.new: 16}
        upgrade = client.get(f"/upgrade/{uid}").json()
        assert upgrade["plan"] == toy_plan and upgrade["serving_plan"]["name"] == toy_plan

        with session_scope(ctx.url) as s:
            keys = item_repo.image_keys(s, g.ids)
            on = {m: set(ids.tolist()) for ids, m in ((c.ids, c.model) for c in item_repo.iter_active_vectors(s))}
        old_items = [(i, ext) for i, ext in zip(g.ids, g.external_ids, strict=True) if i in on[g.old]]
        for i, ext in old_items[:5]:
            image = ctx.images.get(keys[i])
            hits = client.post("/search", files={"image": ("q.png", image, "image/png")}, params={"k": 20}).json()
            models = [h["model"] for h in hits["results"]]
            # every backfilled item first, then the old ones; under dual an item's own image leads
            assert models == [g.new] * 16 + [g.old] * 4
            assert hits["results"][0]["external_id"] != ext
            assert hits["results"][16]["score"] < -SINK / 2
