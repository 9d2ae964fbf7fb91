"""The shared, external adapter of the serving index: the gallery's vectors live in Milvus (one
collection per model, written by ``service.indexport.milvus``), and this API process holds none
of them. It is ready once Milvus answers and can build the configured index, whatever N is, and
any number of replicas serve the same plan: each search reads the serving state from SQL, the
source of truth every replica shares.

A search: the view (query model, plan, the active upgrade) from SQL; one batched Milvus search
per segment of the plan (the old model's leaves out rows moved by the active upgrade); the same
calibration and merge as in-process (``service.index.merge_segments``); one hit per id (a move
is briefly visible in both spaces, ``service.indexport.milvus``); external ids from SQL, where
a hit SQL no longer has (deleted, a stale writer's row) is dropped and deleted from Milvus.

A background thread retries what could not be done: connecting and the start-up check while
Milvus is away, and the outbox's relay (changes whose writers could not publish them).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.api.serving.port import Hit, IndexStatus, IndexView
from service.db.session import read_scope
from service.errors import Unavailable
from service.index import QueryPlan, SegmentQuery, merge_segments
from service.index.milvus import MilvusIndexError, MilvusSpaces
from service.indexport import Change, relay
from service.indexport.milvus import MilvusPublisher, World, read_world, spaces_for, unused_models
from service.metrics import GALLERY_VECTORS
from service.repositories import items as item_repo
from service.settings import Settings
from service.upgrade import plans

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MilvusView(IndexView):
    """The view plus the upgrade whose moved rows the old model's search leaves out."""

    upgrade: int | None = None
    old_model: str | None = None


class MilvusIndex:
    """Implements ``ServingIndex`` over Milvus (see the module's docstring)."""

    def __init__(
        self,
        settings: Settings,
        spaces: MilvusSpaces | None = None,
        *,
        on_retired: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_retired = on_retired or (lambda _model: None)
        self._in_use: set[str] = set()
        self._unused: set[str] = set()  # collections found unused at the last look
        self._refusal: str | None = None  # Milvus refused the configuration: never ready
        self._counts: dict[str, int] = {}  # live rows per model, as last counted
        self._url = settings.sqlalchemy_url
        self._spaces = spaces
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._gauged: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def spaces(self) -> MilvusSpaces:
        if self._spaces is None:
            self._spaces = spaces_for(self._settings)
        return self._spaces

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="milvus-index", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    def not_ready_because(self) -> str:
        return self._refusal or "connecting to Milvus"

    def save_snapshot(self) -> Path | None:
        return None  # nothing held here: a restart is as fast as the first start

    def load(self) -> None:
        """Connect, check that Milvus builds the configured index (a type it cannot build is
        refused here, at start-up, with Milvus's own answer) and that the collections in use
        exist and are loaded."""
        spaces = self.spaces
        probe = f"probe_{uuid.uuid4().hex[:12]}"
        try:
            spaces.ensure(probe, 8)
        finally:
            if spaces.exists(probe):
                spaces.drop(probe)
        with read_scope(self._url) as s:
            world = read_world(s)
        for model in world.in_use:
            if model in world.dims:
                spaces.ensure(model, world.dims[model])
        self._ready.set()

    def reload(self) -> None:
        self.load()

    def poll(self, block_ms: int | None = None) -> int:
        return 0  # nothing to follow: writers publish to Milvus themselves

    def _run(self) -> None:
        backoff = 0.5
        relay_s = self._settings.index_log_relay_s
        while not self._stop.is_set():
            try:
                if not self._ready.is_set():
                    self.load()
                    log.info("Milvus index ready at %s", self._settings.milvus_uri)
                relay(self._settings, MilvusPublisher(self._settings, self.spaces), relay_s)
                with read_scope(self._url) as s:  # one read of SQL's state per round
                    world = read_world(s)
                    unused = set(unused_models(s, world, self.spaces))
                self._update_gauges(self._view_of(world))
                self._retire(world, unused)
                backoff = 0.5
                self._stop.wait(relay_s)
            except MilvusIndexError as e:
                if self._ready.is_set():
                    log.warning("Milvus refused a request: %s", e)
                    self._stop.wait(backoff)
                    continue
                # The configuration itself (an index type this server cannot build, a bad
                # parameter): no retry can fix it. Refused for good, with Milvus's answer in the
                # log and in every 503 (/readyz, /search).
                self._refusal = f"Milvus refused the configured index {self._settings.milvus_index_type!r}: {e}"
                log.error("%s; set HOTREFRESH_MILVUS_INDEX_TYPE / _INDEX_PARAMS and restart", self._refusal)
                return
            except Exception as e:  # Milvus or SQL away: logged, retried
                if isinstance(e, Unavailable) or self._ready.is_set():
                    log.warning("Milvus index: %s; retrying in %.1fs", e, backoff)
                else:
                    log.exception("Milvus index not ready; retrying in %.1fs", backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)

    # -- search ----------------------------------------------------------------------------------
    def _world(self) -> World:
        with read_scope(self._url) as s:
            return read_world(s)

    def view(self) -> MilvusView:
        return self._view_of(self._world())

    @staticmethod
    def _view_of(w: World) -> MilvusView:
        plan = plans.parse(w.plan)
        segments = [w.query_model] if plan is None else [plan.old_model, plan.new_model]
        if w.upgrade is not None and w.old_model is not None and w.new_model is not None and plan is None:
            segments = [w.old_model, w.new_model]
        dims = {m: w.dims[m] for m in dict.fromkeys(segments) if m is not None and m in w.dims}
        return MilvusView(w.query_model, plan, dims, upgrade=w.upgrade, old_model=w.old_model)

    def search(self, view: IndexView, plan: QueryPlan, k: int, *, retry: bool = True) -> list[Hit]:
        upgrade = view.upgrade if isinstance(view, MilvusView) else None
        old_model = view.old_model if isinstance(view, MilvusView) else None
        spaces = self.spaces
        m = plan.num_queries
        segments = list(plan.segments)
        if plan.default is not None:
            named = {sq.model for sq in segments}
            segments += [SegmentQuery(name, plan.default) for name in view.dims if name not in named]

        def one(sq: SegmentQuery) -> tuple[SegmentQuery, np.ndarray, np.ndarray]:
            hide = upgrade if sq.model == old_model else None
            ids, scores = spaces.search(sq.model, sq.queries, k, hide_moved_by=hide)
            return sq, scores, ids

        # One after another, the old model's first: a Strong search reads as of when it arrives,
        # and a move writes the new row before the old row's mark, so a mark the first search
        # sees has its new row visible to the second. Searched at once, the old space could be
        # read after a mark and the new one before its row: the item would be missing.
        searched = {sq.model: one(sq) for sq in sorted(segments, key=lambda sq: sq.model != old_model)}
        results = [searched[sq.model] for sq in segments]  # merged in the plan's order, as in-process
        merged = merge_segments(results, m, k)
        row_ids = merged.ids[0].tolist()
        row_scores = merged.scores[0].tolist()
        row_models = [merged.models[j] for j in merged.segment[0].tolist()]
        seen: set[int] = set()
        picked = []
        for i, score, model in zip(row_ids, row_scores, row_models, strict=True):
            if i >= 0 and i not in seen:  # a move caught between its two writes: one hit
                seen.add(i)
                picked.append((i, score, model))
        with read_scope(self._url) as s:
            external = item_repo.external_ids_of(s, [i for i, _, _ in picked])
        ghosts = [i for i, _, _ in picked if i not in external]
        if ghosts and self._forget(ghosts, list(view.dims)) and retry:
            return self.search(view, plan, k, retry=False)  # the k-th hit may have been behind one
        return [Hit(external[i], float(score), model) for i, score, model in picked if i in external]

    def _forget(self, ids: list[int], models: list[str]) -> bool:
        """Delete rows SQL does not have (deleted, or written by a stale writer after the
        delete); whether that worked."""
        log.warning("deleting %d Milvus rows whose items are no longer in the gallery: %s", len(ids), ids[:10])
        try:
            for model in models:
                self.spaces.delete(model, ids)
        except Exception:  # the next search finds them again
            log.exception("could not delete stale Milvus rows %s", ids[:10])
            return False
        return True

    def model_of(self, item_id: int) -> str | None:
        view = self.view()
        new_first = sorted(view.dims, key=lambda m: m == view.old_model)
        for model in new_first:
            hide = view.upgrade if model == view.old_model else None
            if self.spaces.where(model, [int(item_id)], hide_moved_by=hide):
                return model
        return None

    def catch_up(self, changes: Iterable[Change]) -> None:
        """Nothing to do: the request's unit of work wrote Milvus before answering (or left the
        change in the outbox when Milvus was away), and searches are Strong by default."""

    # -- the operator's and the tests' view ------------------------------------------------------
    def _live(self, view: MilvusView) -> dict[str, int]:
        return {
            m: self.spaces.count(m, live_for=view.upgrade if m == view.old_model else None) for m in sorted(view.dims)
        }

    def status(self) -> IndexStatus:
        """Cheap at any N (``/readyz`` calls it): one round trip shows Milvus answers (a 503
        naming it when not); the counts are the background thread's last (every
        ``index_log_relay_s``), since a filtered count scans the collection."""
        ready = self._ready.is_set()
        view = self.view()
        if ready:
            self.spaces.exists(view.query_model or "")
        counts = dict(self._counts) if ready else {}
        return IndexStatus(
            ready=ready,
            query_model=view.query_model,
            plan=view.plan,
            counts=counts,
            dims=dict(view.dims),
            loaded_from="milvus",
        )

    def items(self) -> dict[int, str]:
        view = self.view()
        out: dict[int, str] = {}
        for model in sorted(view.dims, key=lambda m: m != view.old_model):  # the new model's win
            hide = view.upgrade if model == view.old_model else None
            out.update(dict.fromkeys(self.spaces.all_ids(model, hide_moved_by=hide), model))
        return out

    def _retire(self, world: World, unused: set[str]) -> None:
        """Models a commit or a rollback left unused: their encoders go, and their collections
        once found unused at two looks in a row (a search that read the serving state just
        before the switch may still be searching them)."""
        in_use = set(world.in_use)
        for model in self._in_use - in_use:
            self._on_retired(model)
        self._in_use = in_use
        for model in sorted(unused & self._unused):
            log.info("dropping Milvus collection %s: nothing uses model %r any more", self.spaces.name(model), model)
            self.spaces.drop(model)
        self._unused = unused - self._unused

    def _update_gauges(self, view: MilvusView) -> None:
        counts = self._counts = self._live(view)
        for model in self._gauged - set(counts):
            GALLERY_VECTORS.labels(model=model).set(0)
        for model, n in counts.items():
            GALLERY_VECTORS.labels(model=model).set(n)
        self._gauged |= set(counts)
