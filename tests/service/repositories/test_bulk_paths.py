"""The bulk paths of the items repository on real SQLite and PostgreSQL (binary COPY there):
``add_items`` returns the ids in the items' order and stores exactly the rows and vectors given,
whatever their text holds; a duplicate external id refuses the whole batch; the streamed reads
(``iter_active_vectors``, ``iter_model_vectors``) and ``get_item_states`` give back every vector
bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from service.db.migrate import upgrade_head
from service.db.schema import Embedding, GalleryItem
from service.db.session import read_scope, session_scope
from service.repositories import items

pytestmark = pytest.mark.integration

AWKWARD = [
    "tab\there",
    "new\nline",
    "back\\slash\\N",
    "\\.",
    "quote ' and \" both",
    "crlf\r\nend",
    "ünïcødé ✓ 画像 🙂",
    "x" * 256,
    "ä" * 256,  # 256 characters, 512 bytes in UTF-8
    "",
]


def _new(n: int, start: int = 0, dim: int = 16, models: tuple[str, ...] = ("old",)) -> list[items.NewItem]:
    rng = np.random.default_rng(start)
    out = []
    for k in range(start, start + n):
        ext = AWKWARD[k % len(AWKWARD)][:250] + f"#{k}" if k % 3 else f"e{k}"
        label = AWKWARD[k % len(AWKWARD)] if k % 4 else None
        vecs = {m: rng.standard_normal(dim).astype(np.float32) for m in models}
        out.append(items.NewItem(ext, label, f"{k:064x}", vecs))
    return out


def _rows(url: str) -> list[tuple]:
    with read_scope(url) as s:
        return [
            tuple(r)
            for r in s.execute(
                select(GalleryItem.id, GalleryItem.external_id, GalleryItem.label, GalleryItem.image_key)
                .join(Embedding, Embedding.item_id == GalleryItem.id)
                .order_by(GalleryItem.id)
            )
        ]


def test_added_rows_come_back_in_order_with_their_text_and_vectors_intact(database_url: str) -> None:
    upgrade_head(database_url)
    first, second = _new(300, models=("old", "new")), _new(37, start=300)
    extra = items.NewItem(
        "x" * 256, "tab\tnew\nline\\", "k", {"old": np.array([0.0, -0.0, np.inf, 1e-45, *range(12)], np.float32)}
    )
    with session_scope(database_url) as s:
        a = items.add_items(s, first, "old")
        assert items.add_items(s, [], "old") == []
    with session_scope(database_url) as s:
        b = items.add_items(s, second, "old")
        c = items.add_items(s, [extra], "old")
    added = a + b + c
    given = first + second + [extra]
    assert [r.external_id for r in added] == [it.external_id for it in given]
    assert {r.active_model for r in added} == {"old"}
    ids = [r.id for r in added]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(isinstance(i, int) for i in ids)
    with read_scope(database_url) as s:
        stored = {
            int(i): (e, lab, key)
            for i, e, lab, key in s.execute(
                select(GalleryItem.id, GalleryItem.external_id, GalleryItem.label, GalleryItem.image_key)
            )
        }
        assert stored == {r.id: (it.external_id, it.label, it.image_key) for r, it in zip(added, given, strict=True)}
        assert s.scalar(select(func.count()).select_from(Embedding)) == 2 * 300 + 37 + 1
        chunks = list(items.iter_active_vectors(s, chunk=64))
        got_ids = np.concatenate([ch.ids for ch in chunks])
        assert got_ids.tolist() == ids
        assert [e for ch in chunks for e in ch.external_ids] == [it.external_id for it in given]
        assert {ch.model for ch in chunks} == {"old"}
        for ch in chunks:
            for i, v in zip(ch.ids.tolist(), ch.vectors, strict=True):
                want = given[ids.index(i)].vectors["old"]
                assert v.tobytes() == want.tobytes()  # bit-identical: -0.0, inf, a denormal
        new_ids, new_vecs = zip(*items.iter_model_vectors(s, "new", chunk=100), strict=True)
        assert np.concatenate(new_ids).tolist() == [r.id for r in a]
        assert np.concatenate(new_vecs).tobytes() == np.stack([it.vectors["new"] for it in first]).tobytes()
        assert list(items.iter_model_vectors(s, "nobody")) == []
        states = items.get_item_states(s, [*ids[:5], ids[-1], max(ids) + 1])
        assert sorted(states) == [*ids[:5], ids[-1]]
        assert states[ids[-1]].external_id == "x" * 256
        assert states[ids[-1]].vector is not None
        assert states[ids[-1]].vector.tobytes() == extra.vectors["old"].tobytes()


def test_a_duplicate_external_id_refuses_the_whole_batch(database_url: str) -> None:
    upgrade_head(database_url)
    with session_scope(database_url) as s:
        items.add_items(s, _new(10), "old")
    before = _rows(database_url)
    clash = _new(20, start=10)
    clash[15] = items.NewItem(_new(10)[3].external_id, None, "k", {"old": np.zeros(16, np.float32)})
    with pytest.raises(IntegrityError), session_scope(database_url) as s:
        items.add_items(s, clash, "old")
    within = _new(5, start=40) + _new(1, start=40)  # the same id twice in one batch
    with pytest.raises(IntegrityError), session_scope(database_url) as s:
        items.add_items(s, within, "old")
    assert _rows(database_url) == before
    with session_scope(database_url) as s:  # the database took no harm: the next batch goes in
        after = items.add_items(s, _new(3, start=50), "old")
    assert [r.external_id for r in after] == [it.external_id for it in _new(3, start=50)]
    assert len(_rows(database_url)) == 13


def test_an_empty_gallery_reads_as_nothing(database_url: str) -> None:
    upgrade_head(database_url)
    with read_scope(database_url) as s:
        assert list(items.iter_active_vectors(s)) == []
        assert list(items.iter_model_vectors(s, "old")) == []
        assert items.get_item_states(s, []) == {}
    with session_scope(database_url) as s:
        assert items.add_items(s, [], "old") == []
    assert _rows(database_url) == []
