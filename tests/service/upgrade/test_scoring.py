"""Scoring an upgrade: the task list against a gallery that changes under it."""

from __future__ import annotations

import numpy as np
import pytest

from service.db.schema import GalleryItem
from service.db.session import session_scope
from service.repositories import upgrades
from service.upgrade import control
from workers.context import WorkerContext

pytestmark = pytest.mark.integration


def test_scoring_gives_no_task_to_an_item_deleted_after_its_read(make_gallery) -> None:
    """Scoring reads the gallery in a read-only transaction and writes the tasks afterwards: an
    item deleted in between gets no task (and no foreign-key error sinks the scoring)."""
    g = make_gallery(n=20)
    ctx = WorkerContext.from_settings(g.settings)
    up = control.start(g.settings, ctx.redis, model=g.new, strategy="margin", batch_size=4)
    with session_scope(ctx.url) as s:
        s.delete(s.get(GalleryItem, g.ids[3]))
    scored = np.array(g.ids, np.int64)
    with session_scope(ctx.url) as s:
        kept, prio = upgrades.replace_tasks(s, up.id, scored, np.arange(20, dtype=np.float32))
    # Kept in the queue's order, highest priority first.
    assert kept.tolist() == [i for i in reversed(g.ids) if i != g.ids[3]]
    assert prio.tolist() == [float(k) for k in reversed(range(20)) if k != 3]
    with session_scope(ctx.url) as s:
        assert upgrades.task_counts(s, up.id) == {"pending": 19, "done": 0, "failed": 0, "mapped": 0}
