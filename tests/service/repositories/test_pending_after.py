"""SQL's side of the bounded Redis window (``upgrades.pending_after``) on real SQLite and
PostgreSQL: the queue's order page by page (ties by ascending id across page boundaries, done
and failed tasks skipped), and the planner reading it from the pending index in order, not
sorting every pending task per refill."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import text

from service.db.migrate import upgrade_head
from service.db.schema import BackfillTask
from service.db.session import session_scope
from service.repositories import items, upgrades

pytestmark = pytest.mark.integration


def _tasks(url: str, n: int) -> tuple[int, list[int]]:
    """An upgrade with n tasks on a coarse priority grid (many ties); some done, some failed.
    Returns the upgrade id and its pending ids in the offline order."""
    from models.uncertainty import backfill_order

    upgrade_head(url)
    rng = np.random.default_rng(5)
    new = [items.NewItem(f"x{k}", None, f"{k:064x}", {"old": np.ones(4, np.float32)}) for k in range(n)]
    with session_scope(url) as s:
        ids = np.array([row.id for row in items.add_items(s, new, "old")], dtype=np.int64)
        s.execute(
            text(
                "INSERT INTO upgrades (id, from_model, to_model, strategy, state, batch_size, total, done, "
                "failed, checkpoints, created_at, updated_at) VALUES (1,'old','new','margin','running',"
                "2,0,0,0,'[]',CURRENT_TIMESTAMP,CURRENT_TIMESTAMP)"
            )
        )
        prio = rng.integers(0, 25, n) / 4.0
        upgrades.replace_tasks(s, 1, ids, prio)
        finished = rng.choice(ids, n // 5, replace=False).tolist()
        s.query(BackfillTask).filter(BackfillTask.item_id.in_(finished[::2])).update({"status": "done"})
        s.query(BackfillTask).filter(BackfillTask.item_id.in_(finished[1::2])).update({"status": "failed"})
    keep = ~np.isin(ids, finished)
    order = backfill_order(prio[keep])  # ids ascending, so the stable sort breaks ties by id
    return 1, ids[keep][order].tolist()


def test_pages_after_a_cursor_follow_the_offline_order(database_url: str) -> None:
    uid, offline = _tasks(database_url, 2000)
    got: list[int] = []
    after = None
    with session_scope(database_url) as s:
        while page := upgrades.pending_after(s, uid, after, 97):
            got += [i for i, _ in page]
            after = (page[-1][1], page[-1][0])
        assert upgrades.pending_after(s, uid, None, 0) == []
    assert got == offline


def test_the_refill_reads_the_pending_index_in_order(database_url: str) -> None:
    uid, _ = _tasks(database_url, 500)
    with session_scope(database_url) as s:
        bind = s.get_bind()
        for stmt in upgrades.pending_after_queries(uid, (3.0, 10), 50):
            if bind.dialect.name == "sqlite":
                # the statement as executed, with its parameters bound
                compiled = stmt.compile(bind)
                rows = s.connection().exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + str(compiled), tuple(compiled.params.values())
                )
                plan = " ".join(str(r[-1]) for r in rows)
                assert "ix_backfill_tasks_pending" in plan and "TEMP B-TREE" not in plan, plan
            else:
                s.execute(text("ANALYZE backfill_tasks"))
                s.execute(text("SET LOCAL enable_seqscan = off"))  # 500 rows: make it show its choice
                s.execute(text("SET LOCAL enable_bitmapscan = off"))
                sql = str(stmt.compile(bind, compile_kwargs={"literal_binds": True}))
                plan = " ".join(str(r[0]) for r in s.execute(text("EXPLAIN " + sql)))
                # an index condition on both columns: no walk over the cursor's finished ties
                assert "ix_backfill_tasks_pending" in plan and "Sort" not in plan and "Filter" not in plan, plan
