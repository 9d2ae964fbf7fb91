"""Id lists bound as one parameter (``service.repositories.common.in_ids``) and the set-based
vector upsert, on real SQLite and PostgreSQL: any length (past the old per-statement chunk),
numpy integers, duplicates and ids that are not there, and each row's vector cut from the
right place of the batch's blob."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from service.db.migrate import upgrade_head
from service.db.schema import Embedding
from service.db.session import session_scope
from service.repositories import items
from service.repositories.common import IN_CHUNK, vector_from_bytes

pytestmark = pytest.mark.integration

N = 3 * IN_CHUNK + 7  # longer than the IN (...) lists used to be cut to


def _gallery(url: str, n: int = N) -> list[int]:
    upgrade_head(url)
    rng = np.random.default_rng(0)
    new = [
        items.NewItem(f"x{k}", None, f"{k:064x}", {"old": rng.standard_normal(4).astype(np.float32)}) for k in range(n)
    ]
    with session_scope(url) as s:
        return [row.id for row in items.add_items(s, new, "old")]


def test_an_id_list_of_any_length_selects_exactly_those_rows(database_url: str) -> None:
    ids = _gallery(database_url)
    wanted = np.array(ids[::2] + [max(ids) + 10, -1, ids[0]], dtype=np.int64)  # missing ids, a duplicate
    with session_scope(database_url) as s:
        keys = items.image_keys(s, wanted)
        assert sorted(keys) == ids[::2]
        assert keys[ids[4]] == f"{4:064x}"
        assert items.image_keys(s, []) == {}
        assert sorted(items.lock_items(s, list(wanted))) == ids[::2]
        moved = items.set_active_model(s.connection(), "new", ids[1::2] + [max(ids) + 1])
        assert moved == ids[1::2]
        assert items.count_on_model(s, "new") == len(ids[1::2])


def test_a_batch_upsert_puts_each_vector_on_its_own_row_and_replaces_what_was_there(database_url: str) -> None:
    ids = _gallery(database_url)
    rng = np.random.default_rng(1)
    order = rng.permutation(ids)  # not ascending: row k of the blob belongs to order[k]
    first = rng.standard_normal((len(order), 8)).astype(np.float32)
    second = rng.standard_normal((len(order), 8)).astype(np.float32)
    with session_scope(database_url) as s:
        items.upsert_embeddings(s, "new", order, first)
    with session_scope(database_url) as s:
        items.upsert_embeddings(s, "new", order[:100], second[:100])  # replaces, adds no row
        items.upsert_embeddings(s, "new", [], np.zeros((0, 8), np.float32))
    with session_scope(database_url) as s:
        stored = dict(s.execute(select(Embedding.item_id, Embedding.vector).where(Embedding.model == "new")).all())
        with pytest.raises(ValueError, match="3 ids for 2 vectors"):
            items.upsert_embeddings(s, "new", order[:3], first[:2])
    assert len(stored) == len(ids)
    expected = {int(i): (second[k] if k < 100 else first[k]) for k, i in enumerate(order)}
    for i, blob in stored.items():
        np.testing.assert_array_equal(vector_from_bytes(blob), expected[int(i)])
