"""The write side of the Milvus backend: changes committed to SQL, written to Milvus.

A change names ids (``service.indexport.changes``); :class:`MilvusPublisher` reads what SQL says
about them *now* and makes Milvus say the same (:func:`converge`), so publishing a change twice,
late, or after a newer one leaves the same collections. What Milvus holds, for SQL's state:

- every item has a row in its active model's collection (``moved_by`` 0);
- during upgrade U (old model A, new model B), an item already on B keeps its row in A, marked
  ``moved_by = U`` with A's vector as SQL still has it: searches of A during U leave it out, and
  a rollback (SQL: back on A, no upgrade) makes it live again without writing a vector. Items
  added during U are written the same way (SQL has both vectors: ``service.gallery.add_batch``);
- a collection no model in use needs is dropped once the upgrade that used it is over
  (:func:`unused_models`): the old model's after a commit, the new model's after a rollback.

The order of the two writes of a move (B's row first, then A's mark) means a search between
them can find the item in both spaces but never in neither; the read side keeps one hit per id
(``service.api.serving.milvus``). A stale writer can still race a newer one (two processes
converging the same id from different SQL reads); the read side checks every hit against SQL and
deletes what SQL no longer has, and ``hotrefresh index rebuild`` converges everything.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from service.db.session import read_scope
from service.index.milvus import NOT_MOVED, MilvusConfig, MilvusSpaces
from service.indexport.changes import Change
from service.repositories import catalog, upgrades
from service.repositories import items as item_repo
from service.settings import Settings

log = logging.getLogger(__name__)


def config_of(settings: Settings) -> MilvusConfig:
    return MilvusConfig(
        uri=settings.milvus_uri,
        token=settings.milvus_token,
        db_name=settings.milvus_db,
        prefix=settings.milvus_prefix,
        index_type=settings.milvus_index_type,
        index_params=dict(settings.milvus_index_params),
        search_params=dict(settings.milvus_search_params),
        consistency=settings.milvus_consistency,
        timeout_s=settings.milvus_timeout_s,
    )


_clients: dict[tuple[int, str], MilvusSpaces] = {}
_clients_lock = threading.Lock()


def spaces_for(settings: Settings) -> MilvusSpaces:
    """This process's client for the configured Milvus, made on first use (a server that is down
    is a 503 naming Milvus, and the next call tries again). One per process id: a gRPC channel
    must not cross a fork (Celery's pool processes are forked)."""
    config = config_of(settings)
    key = (os.getpid(), repr(config))
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = MilvusSpaces(config)
        return client


@dataclass(frozen=True)
class World:
    """What SQL says the index must look like, apart from the items themselves: the models in
    use and their dimensions, the serving plan, and the upgrade whose moves hide old rows."""

    query_model: str | None
    gallery_model: str | None
    plan: dict | None  # the serving plan as stored (the read side parses it)
    upgrade: int | None  # the active upgrade's id: rows marked with it are hidden in ``old_model``
    old_model: str | None  # the active upgrade's models
    new_model: str | None
    dims: dict[str, int]  # every registered model's dimension

    @property
    def in_use(self) -> list[str]:
        """Models whose collection searches or writes may need now, each once."""
        names = [self.query_model, self.gallery_model, self.old_model, self.new_model]
        return list(dict.fromkeys(n for n in names if n is not None))


def read_world(session: Session) -> World:
    state = catalog.peek_serving_state(session)
    up = upgrades.active_upgrade(session)
    dims = {m.name: int(m.embedding_dim) for m in catalog.list_models(session)}
    return World(
        query_model=state.query_model if state is not None else None,
        gallery_model=state.gallery_model if state is not None else None,
        plan=state.plan if state is not None and state.plan else None,
        upgrade=int(up.id) if up is not None else None,
        old_model=up.from_model if up is not None else None,
        new_model=up.to_model if up is not None else None,
        dims=dims,
    )


class MilvusPublisher:
    """Implements ``ChangePublisher`` for Milvus. ``late`` needs no special case: every change is
    applied as "make Milvus match SQL now", which is right whenever it runs."""

    def __init__(self, settings: Settings, spaces: MilvusSpaces | None = None) -> None:
        self.settings = settings
        self._spaces = spaces

    @property
    def spaces(self) -> MilvusSpaces:
        if self._spaces is None:
            self._spaces = spaces_for(self.settings)
        return self._spaces

    def publish(self, changes: Sequence[Change], *, late: bool = False) -> None:
        ids: set[int] = set()
        for change in changes:
            if change.op in ("add", "move", "delete"):
                ids.update(change.ids)
            # "switch" (an upgrade started, a plan chosen): the collections in use are ensured by
            # converge. "rollback" and "commit" write nothing: SQL's switch is the whole of it
            # (searches read it), and the collection left unused is dropped a little later by
            # the read side (``service.api.serving.milvus``), once no search in flight can
            # still be looking at it.
        converge(self.settings, self.spaces, ids)


def converge(settings: Settings, spaces: MilvusSpaces, ids: Iterable[int], *, retire_unused: bool = False) -> None:
    """Make Milvus hold what SQL says for ``ids`` (and the collections the models in use need;
    with ``retire_unused``, drop the collections of models nothing uses any more)."""
    wanted = sorted({int(i) for i in ids})
    with read_scope(settings.sqlalchemy_url) as s:
        world = read_world(s)
        states = item_repo.get_item_states(s, wanted) if wanted else {}
        marks = _old_vectors(s, world, states)
        if retire_unused:
            unused = unused_models(s, world, spaces)
    for model in world.in_use:
        if model in world.dims:
            spaces.ensure(model, world.dims[model])
    if wanted:
        _write(spaces, world, wanted, states, marks)
    if retire_unused:
        for model in unused:
            log.info(
                "dropping Milvus collection %s: no item and no serving plan uses model %r", spaces.name(model), model
            )
            spaces.drop(model)


def _old_vectors(
    session: Session, world: World, states: dict[int, item_repo.ItemState]
) -> tuple[np.ndarray, np.ndarray]:
    """During an upgrade, the old model's vectors of the items already on the new model (their
    marked rows in the old collection)."""
    if world.upgrade is None or world.old_model is None:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    on_new = [i for i, st in states.items() if st.active_model == world.new_model and st.vector is not None]
    if not on_new:
        return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
    return item_repo.get_vectors(session, world.old_model, on_new)


def _write(
    spaces: MilvusSpaces,
    world: World,
    wanted: list[int],
    states: dict[int, item_repo.ItemState],
    marks: tuple[np.ndarray, np.ndarray],
) -> None:
    live: dict[str, list[item_repo.ItemState]] = defaultdict(list)
    gone: list[int] = []
    for i in wanted:
        st = states.get(i)
        if st is None or st.vector is None:
            gone.append(i)
        else:
            live[st.active_model].append(st)
    # First each item's live row, then what hides the others: a search in between sees an item
    # twice (the read side keeps one), never not at all.
    for model, group in live.items():
        if model not in world.dims:
            continue  # a model deleted from the registry: nothing to write it to
        spaces.ensure(model, world.dims[model])
        vecs = np.stack([st.vector for st in group if st.vector is not None])
        spaces.upsert(model, [st.id for st in group], vecs, moved_by=NOT_MOVED)
    if world.upgrade is not None and world.old_model is not None and world.new_model is not None:
        mark_ids, mark_vecs = marks
        if len(mark_ids):
            spaces.upsert(world.old_model, mark_ids, mark_vecs, moved_by=world.upgrade)
        # On the new model without an old vector: nothing may stay live in the old space.
        unmarked = {st.id for st in live.get(world.new_model, [])} - {int(i) for i in mark_ids}
        # Still on the old model: nothing of it in the new space.
        back = [st.id for st in live.get(world.old_model, [])]
        if unmarked:
            spaces.delete(world.old_model, sorted(unmarked))
        if back and spaces.exists(world.new_model):
            spaces.delete(world.new_model, back)
    if gone:
        for model in world.in_use:
            spaces.delete(model, gone)


def unused_models(session: Session, world: World, spaces: MilvusSpaces) -> list[str]:
    """Registered models with a collection that no serving plan, upgrade or item uses (the old
    model's after a commit, the new model's after a rollback; one COUNT per such model)."""
    in_use = set(world.in_use)
    out = []
    for model in sorted(set(world.dims) - in_use):
        if spaces.exists(model) and not item_repo.count_on_model(session, model):
            out.append(model)
    return out


def rebuild(
    settings: Settings,
    spaces: MilvusSpaces,
    *,
    chunk: int = 10_000,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Converge every item of the gallery, in id order, ``chunk`` at a time: an empty (or damaged)
    Milvus rebuilt from SQL. ``progress(done, total)`` is called after each chunk. Returns the
    number of items."""
    with read_scope(settings.sqlalchemy_url) as s:
        total = item_repo.count_items(s)
        bounds = item_repo.id_range(s)
    done = 0
    converge(settings, spaces, [], retire_unused=True)
    if bounds is None:
        return 0
    lo, hi = bounds
    start = lo
    while start <= hi:
        with read_scope(settings.sqlalchemy_url) as s:
            ids = item_repo.ids_from(s, start, chunk)
        if not ids:
            break
        converge(settings, spaces, ids)
        done += len(ids)
        start = ids[-1] + 1
        if progress is not None:
            progress(done, total)
    return done
