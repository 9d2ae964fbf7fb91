"""Mapped vectors (service/upgrade/mapping.py): items whose image is gone or undecodable get the
``transform`` plan's old->new map at the end of the backfill, and a vector-only upgrade maps every
item with the map the new model carries. Real SQLite/PostgreSQL, Redis, images and tiny encoders;
the drain runs in this process (the Celery worker processes: tests/e2e/test_upgrades_without_images.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from models.carried_map import carried_map
from models.checkpoint import read_meta
from models.plans import build_spec
from service.db.schema import Embedding, ModelRow
from service.db.session import session_scope
from service.queue import BackfillQueue
from service.repositories import catalog, upgrades
from service.repositories import items as item_repo
from service.upgrade import control, mapping
from service.upgrade.view import view
from tests.utils.checkpoints import add_carried_map
from tests.utils.gallery import delete_images
from tests.utils.upgrade import models_of, run_to_end, start_and_score

pytestmark = pytest.mark.integration


def _mapped_ids(url: str, model: str) -> list[int]:
    with session_scope(url) as s:
        return sorted(
            int(i)
            for i in s.scalars(select(Embedding.item_id).where(Embedding.model == model, Embedding.mapped.is_(True)))
        )


def test_items_whose_images_are_gone_get_the_transform_map_at_the_end_and_keep_their_failure(make_gallery) -> None:
    g = make_gallery(n=66, corrupt=11)  # img-0..10 undecodable
    delete_images(g.settings, g.external_ids[11:22])  # img-11..21 missing
    lost = g.ids[:22]
    ctx, uid = start_and_score(g, strategy="random", batch_size=8)
    run_to_end(ctx, uid)
    url = g.settings.sqlalchemy_url
    with session_scope(url) as s:
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "completed" and up.done == 44 and up.mapped == 22
        assert upgrades.task_counts(s, uid) == {"pending": 0, "done": 44, "failed": 0, "mapped": 22}
        shown = view(s, up, ctx.redis, g.settings)
        # the failure table still says what happened to each, and that it was mapped
        errors = {f.external_id: f.error for f in shown.failures}
        assert sorted(errors) == sorted(g.external_ids[:22]) and all(f.mapped for f in shown.failures)
        assert all("ImageNotFound" in errors[e] for e in g.external_ids[11:22])
        assert (shown.done, shown.mapped, shown.failed, shown.fraction) == (44, 22, 0, 1.0)
        # the map is transform's, fitted on every backfilled pair (old vector, new vector)
        done = sorted(set(g.ids) - set(lost))
        _, old_pairs = item_repo.get_vectors(s, g.old, done)
        _, new_pairs = item_repo.get_vectors(s, g.new, done)
        spec = build_spec("transform", pairs=(old_pairs, new_pairs), transform=g.settings.plan_transform)
        assert spec.transform is not None and spec.transform.pairs == 44
        _, old_lost = item_repo.get_vectors(s, g.old, lost)
        _, got = item_repo.get_vectors(s, g.new, lost)
        want = spec.transform.apply(old_lost)
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, atol=1e-5)
        assert item_repo.vector_source(s, lost[0], g.new) == "mapped"
        assert item_repo.vector_source(s, done[0], g.new) == "encoded"
    assert _mapped_ids(url, g.new) == sorted(lost)
    assert models_of(url) == {g.new: 66}  # every item live on the new model
    assert mapping.map_tasks(g.settings, ctx.redis, uid, "failed") == 0  # done once; completed now
    assert control.act(g.settings, ctx.redis, uid, "commit") == "committed"  # nothing stranded


def test_with_too_few_pairs_and_no_carried_map_the_failed_items_stay_on_the_old_model(make_gallery) -> None:
    g = make_gallery(n=40, corrupt=20)  # 20 pairs: fewer than transform fits a map on
    ctx, uid = start_and_score(g, strategy="random", batch_size=8)
    run_to_end(ctx, uid)
    with session_scope(g.settings.sqlalchemy_url) as s:
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "completed" and up.done == 20 and up.mapped == 0
        shown = view(s, up, ctx.redis, g.settings)
        assert shown.failed == 20 and not any(f.mapped for f in shown.failures)
    assert models_of(g.settings.sqlalchemy_url) == {g.new: 20, g.old: 20}
    with pytest.raises(control.UpgradeConflict):
        control.act(g.settings, ctx.redis, uid, "commit")


def test_with_too_few_pairs_the_map_the_new_model_carries_is_used(
    make_gallery, tiny_checkpoints: tuple[Path, Path], fmnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    add_carried_map(tiny_checkpoints[1], tiny_checkpoints[0], fmnist_test[0][300:600])
    carried = carried_map(read_meta(tiny_checkpoints[1]).extra)
    assert carried is not None
    g = make_gallery(n=40, corrupt=20)
    ctx, uid = start_and_score(g, strategy="random", batch_size=8)
    run_to_end(ctx, uid)
    with session_scope(g.settings.sqlalchemy_url) as s:
        assert upgrades.get_upgrade(s, uid).mapped == 20
        _, old = item_repo.get_vectors(s, g.old, g.ids[:20])
        _, got = item_repo.get_vectors(s, g.new, g.ids[:20])
    np.testing.assert_allclose(got, mapping.mapped_vectors(carried.map, old), atol=1e-6)
    assert models_of(g.settings.sqlalchemy_url) == {g.new: 40}


def test_a_vector_only_upgrade_reads_no_image_and_maps_every_item(
    make_gallery, tiny_checkpoints: tuple[Path, Path], fmnist_test: tuple[np.ndarray, np.ndarray]
) -> None:
    add_carried_map(tiny_checkpoints[1], tiny_checkpoints[0], fmnist_test[0][300:600])
    g = make_gallery(n=40)
    delete_images(g.settings, g.external_ids)  # not one image left to read
    ctx, uid = start_and_score(g, vector_only=True, batch_size=8)
    assert BackfillQueue(ctx.redis, g.settings, uid).depth() == 0  # nothing to lease
    run_to_end(ctx, uid)
    url = g.settings.sqlalchemy_url
    with session_scope(url) as s:
        up = upgrades.get_upgrade(s, uid)
        assert up.state == "completed" and up.vector_only and up.strategy == "random"
        shown = view(s, up, ctx.redis, g.settings)
        assert (shown.done, shown.mapped, shown.failed, shown.failures) == (0, 40, 0, [])
        assert shown.vector_only and shown.baseline is not None and shown.baseline["probes"] == 0
    assert _mapped_ids(url, g.new) == sorted(g.ids) and models_of(url) == {g.new: 40}
    assert control.act(g.settings, ctx.redis, uid, "commit") == "committed"


def test_a_vector_only_upgrade_to_a_model_without_a_map_is_refused_and_changes_nothing(make_gallery, r) -> None:
    g = make_gallery(n=8)
    with session_scope(g.settings.sqlalchemy_url) as s:
        before = catalog.get_serving_state(s).gallery_model
    with pytest.raises(control.UpgradeRequestError, match="carries no old->new map"):
        control.start(g.settings, r, model=g.new, vector_only=True)
    with session_scope(g.settings.sqlalchemy_url) as s:
        assert upgrades.latest_upgrade(s) is None
        assert catalog.get_serving_state(s).gallery_model == before == g.old


def _row(name: str, content_hash: str, dim: int, extra: dict | None = None) -> ModelRow:
    return ModelRow(name=name, content_hash=content_hash, embedding_dim=dim, meta={"extra": extra or {}})


def test_a_carried_map_is_only_taken_from_exactly_the_gallery_models_weights() -> None:
    """Unit: ``carried_for`` checks name, weights and shape (model rows built in memory)."""
    from models.carried_map import KEY, CarriedMap
    from models.plans.linear_map import LinearMap

    stored = CarriedMap("old", "h1", LinearMap(np.eye(4, 3, dtype=np.float32), "lstsq", 40)).to_dict()
    new = _row("new", "h9", 3, {KEY: stored})
    assert mapping.carried_for(_row("old", "h1", 4), new).weight.shape == (4, 3)
    for old, reason in [
        (_row("other", "h1", 4), "not from 'other'"),
        (_row("old", "h2", 4), "weights h1"),
        (_row("old", "h1", 5), "shape"),
    ]:
        with pytest.raises(mapping.NoMap, match=reason):
            mapping.carried_for(old, new)
    with pytest.raises(mapping.NoMap, match="carries no"):
        mapping.carried_for(_row("old", "h1", 4), _row("new", "h9", 3))
    with pytest.raises(mapping.NoMap, match="not a usable map"):
        mapping.carried_for(_row("old", "h1", 4), _row("new", "h9", 3, {KEY: {"shape": "x"}}))


def test_mapped_vectors_are_unit_length_and_a_zero_stays_zero() -> None:
    from models.plans.linear_map import LinearMap

    t = LinearMap(np.array([[2.0, 0.0], [0.0, 1.0]], np.float32), "lstsq", 32)
    out = mapping.mapped_vectors(t, np.array([[1.0, 1.0], [0.0, 0.0]], np.float32))
    np.testing.assert_allclose(out, [[2 / np.sqrt(5), 1 / np.sqrt(5)], [0.0, 0.0]], atol=1e-6)


def test_two_workers_mapping_at_once_map_each_item_once(make_gallery, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two completions racing (threads, small chunks): every failed item mapped once, counted once."""
    import threading

    from sqlalchemy import update

    from service.db.schema import BackfillTask

    g = make_gallery(n=60)
    ctx, uid = start_and_score(g, strategy="random", batch_size=8)
    rng = np.random.default_rng(0)
    encoded, failed = g.ids[:40], g.ids[40:]
    with session_scope(g.settings.sqlalchemy_url) as s:  # a backfill that encoded 40 and failed 20
        _, old = item_repo.get_vectors(s, g.old, encoded)
        upgrades.record_encoded(s, uid, g.new, encoded, old @ rng.normal(size=(old.shape[1], 32)).astype(np.float32))
        s.execute(
            update(BackfillTask)
            .where(BackfillTask.upgrade_id == uid, BackfillTask.item_id.in_(failed))
            .values(status="failed")
        )
    monkeypatch.setattr(mapping, "MAP_CHUNK", 3)
    counts: list[int] = []
    barrier = threading.Barrier(2)

    def complete() -> None:
        barrier.wait()
        counts.append(mapping.map_tasks(g.settings, ctx.redis, uid, "failed"))

    threads = [threading.Thread(target=complete) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(counts) == 20 and len(counts) == 2, counts
    with session_scope(g.settings.sqlalchemy_url) as s:
        assert upgrades.get_upgrade(s, uid).mapped == 20
        assert upgrades.task_counts(s, uid) == {"pending": 0, "done": 40, "failed": 0, "mapped": 20}
    assert _mapped_ids(g.settings.sqlalchemy_url, g.new) == sorted(failed)
    assert models_of(g.settings.sqlalchemy_url) == {g.new: 60}
