"""``service.indexport.milvus`` on real SQLite and a real Milvus standalone: a change published
late, twice, or after a newer one leaves Milvus as SQL says; a crash between the SQL commit and
the Milvus write (the write failed: Milvus unreachable) converges through the outbox's relay;
``rebuild`` fills an empty Milvus from SQL."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from service.db.schema import ModelRow
from service.db.session import read_scope
from service.indexport import Change, relay, unit_of_work
from service.indexport.milvus import MilvusPublisher, rebuild, spaces_for
from service.repositories import catalog
from service.repositories import items as item_repo
from service.repositories import outbox as outbox_repo
from service.settings import Settings
from tests.utils.servers import OwnMilvus
from tests.utils.writer import D, unit

pytestmark = [pytest.mark.integration]


@pytest.fixture
def milvus_settings(service_settings: Settings, milvus_server: OwnMilvus) -> Settings:
    """A gallery model "old" of dimension D registered in SQL; Milvus collections of our own."""
    settings = service_settings.model_copy(
        update={
            "index_backend": "milvus",
            "milvus_uri": milvus_server.uri,
            "milvus_prefix": f"t{uuid.uuid4().hex[:12]}",
            "milvus_index_type": "FLAT",
            "milvus_index_params": {},
            "milvus_search_params": {},
        }
    )
    with unit_of_work(settings, None, publisher=MilvusPublisher(settings)) as uow:  # type: ignore[arg-type]
        catalog.add_model(
            uow.session,
            ModelRow(
                name="old",
                path="old.pt",
                arch="conv2",
                embedding_dim=D,
                num_classes=10,
                trained_with="ce",
                content_hash="0" * 64,
                meta={},
            ),
        )
        catalog.set_serving_state(uow.session, gallery_model="old", query_model="old")
        uow.record(Change.switch("old"))
    return settings


def _add(settings: Settings, n: int, prefix: str, publisher) -> list[int]:
    rng = np.random.default_rng(n)
    with unit_of_work(settings, None, publisher=publisher) as uow:  # type: ignore[arg-type]
        items = [item_repo.NewItem(f"{prefix}{k}", None, "0" * 64, {"old": unit(rng, 1)[0]}) for k in range(n)]
        ids = [row.id for row in item_repo.add_items(uow.session, items, active_model="old")]
        uow.record(Change.add("old", ids))
    return ids


class Unreachable:
    """A publisher whose store is away: what a writer sees when Milvus is down."""

    def publish(self, changes, *, late: bool = False) -> None:
        raise ConnectionError("milvus unavailable")


def test_late_and_repeated_changes_leave_what_sql_says(milvus_settings: Settings) -> None:
    publisher = MilvusPublisher(milvus_settings)
    spaces = publisher.spaces
    ids = _add(milvus_settings, 20, "a", publisher)
    assert sorted(spaces.all_ids("old")) == ids
    with unit_of_work(milvus_settings, None, publisher=publisher) as uow:  # type: ignore[arg-type]
        for item in item_repo.get_items_by_ids(uow.session, ids[:5]):
            item_repo.delete_item(uow.session, item)
        uow.record(Change.delete(ids[:5]))
    # The first add, published again late (a relay of a row whose drop failed): SQL decides.
    publisher.publish([Change.add("old", ids)], late=True)
    publisher.publish([Change.add("old", ids)])
    assert sorted(spaces.all_ids("old")) == ids[5:]
    hits, _ = spaces.search("old", unit(np.random.default_rng(20), 1), 30)
    assert set(hits[0][hits[0] >= 0].tolist()) == set(ids[5:])


def test_a_write_lost_after_the_sql_commit_converges_through_the_relay(milvus_settings: Settings) -> None:
    spaces = spaces_for(milvus_settings)
    ids = _add(milvus_settings, 12, "b", Unreachable())  # committed; the Milvus write failed
    assert spaces.all_ids("old") == []
    with read_scope(milvus_settings.sqlalchemy_url) as s:
        assert outbox_repo.any_staged_before(s, float("inf"))
    assert relay(milvus_settings, MilvusPublisher(milvus_settings), 0.0) == 1
    assert sorted(spaces.all_ids("old")) == ids
    assert relay(milvus_settings, MilvusPublisher(milvus_settings), 0.0) == 0  # nothing left staged


def test_rebuild_fills_an_empty_milvus_from_sql(milvus_settings: Settings) -> None:
    publisher = MilvusPublisher(milvus_settings)
    ids = _add(milvus_settings, 30, "c", publisher)
    spaces = publisher.spaces
    spaces.drop("old")
    seen: list[tuple[int, int]] = []
    assert rebuild(milvus_settings, spaces, chunk=7, progress=lambda done, total: seen.append((done, total))) == 30
    assert sorted(spaces.all_ids("old")) == ids
    assert seen[-1] == (30, 30) and len(seen) == 5


def test_an_index_type_milvus_cannot_build_is_refused_at_start_up(milvus_settings: Settings) -> None:
    """GPU_CAGRA on a CPU Milvus: the read adapter never turns ready, says why in every 503, and
    leaves no collection behind from its check."""
    import time

    from service.api.serving import NotReady, Serving
    from service.api.serving.milvus import MilvusIndex

    settings = milvus_settings.model_copy(update={"milvus_index_type": "GPU_CAGRA"})
    before = set(spaces_for(milvus_settings)._client.list_collections())
    index = MilvusIndex(settings)
    serving = Serving(settings, None, index=index)  # type: ignore[arg-type]
    serving.start()
    try:
        deadline = time.monotonic() + 60
        while "refused" not in index.not_ready_because() and time.monotonic() < deadline:
            time.sleep(0.2)
        with pytest.raises(NotReady, match="refused the configured index 'GPU_CAGRA'"):
            serving.require_ready()
        assert not serving.wait_ready(0)
    finally:
        serving.stop()
    assert set(spaces_for(milvus_settings)._client.list_collections()) == before


def test_a_row_sql_no_longer_has_is_left_out_of_results_and_deleted(milvus_settings: Settings) -> None:
    """A stale writer's row (its item deleted in SQL before the write landed): searches never
    return it, and the first one to meet it deletes it from Milvus."""
    from service.api.serving.milvus import MilvusIndex
    from service.index import QueryPlan

    publisher = MilvusPublisher(milvus_settings)
    ids = _add(milvus_settings, 10, "d", publisher)
    spaces = publisher.spaces
    ghost = max(ids) + 1000
    q = unit(np.random.default_rng(99), 1)
    spaces.upsert("old", [ghost], q)  # the best possible match for q, and no item of SQL's
    index = MilvusIndex(milvus_settings, spaces)
    view = index.view()
    hits = index.search(view, QueryPlan.single(q, ["old"]), 5)
    assert len(hits) == 5 and all(h.external_id.startswith("d") for h in hits)
    assert ghost not in set(spaces.all_ids("old"))
    assert index.model_of(ids[0]) == "old" and index.model_of(ghost) is None
