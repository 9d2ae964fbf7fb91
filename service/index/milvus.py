"""The gallery's vector spaces in Milvus: one collection per model, keyed by item id.

This is the data access of the *shared, external* serving index (docs/design.md, "The serving
index"): API replicas hold no gallery and search Milvus; writers' changes reach it after their
SQL commit. It keeps the mixed index's semantics with what Milvus 2.3 offers (no nullable
fields, no partial update), so the same code runs on 2.6:

- an item lives in its model's collection (``id``, ``moved_by``, ``vec``);
- a move to a new model upserts the item into the new model's collection and marks its row in
  the old one with the upgrade's id (``moved_by``), keeping the old vector: a search of the old
  space during upgrade U filters ``moved_by != U``, and outside an upgrade (after a rollback,
  say) it filters nothing, so **rollback is a switch**: no vector is copied back;
- a later upgrade U' ignores what U marked (its filter names U' only); commit drops the old
  model's collection whole.

Searches ask Milvus for ``k`` per space (the merge across spaces is the caller's, the same code as
in-process); with an exact index (``FLAT``) the top-k equals brute force (tests).

``pymilvus`` is imported only here, so nothing pays its import unless this backend is chosen.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import BadRequest, DependencyDown
from service.index.errors import DimensionError, IndexInputError
from service.index.validation import as_queries

# Index types a CPU Milvus builds, and the GPU ones a GPU Milvus adds; anything else is refused
# before a collection is made, and a type the server cannot build is refused at start-up by
# :meth:`MilvusSpaces.ensure` (the server's own answer), never accepted silently.
CPU_INDEX_TYPES = ("FLAT", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "HNSW", "DISKANN", "SCANN")
GPU_INDEX_TYPES = ("GPU_CAGRA", "GPU_IVF_FLAT", "GPU_IVF_PQ", "GPU_BRUTE_FORCE")
INDEX_TYPES = CPU_INDEX_TYPES + GPU_INDEX_TYPES
CONSISTENCY_LEVELS = ("Strong", "Bounded", "Session", "Eventually")
NOT_MOVED = 0  # moved_by of a row that is live in its space
MAX_BATCH = 4096  # rows per upsert or delete call (Milvus caps a request's size)
RECONNECT_S = 1.0  # after a failed connect, calls fail fast this long before the next try


class MilvusIndexError(BadRequest):
    """A configuration Milvus refuses (an index type it cannot build, a bad parameter)."""


@dataclass(frozen=True)
class MilvusConfig:
    uri: str
    token: str = ""
    db_name: str = ""
    prefix: str = "hotrefresh"
    index_type: str = "FLAT"
    index_params: dict[str, Any] = field(default_factory=dict)
    search_params: dict[str, Any] = field(default_factory=dict)
    consistency: str = "Strong"
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise MilvusIndexError(
                f"unknown Milvus index type {self.index_type!r}; choose from {', '.join(INDEX_TYPES)}"
            )
        if self.consistency not in CONSISTENCY_LEVELS:
            raise MilvusIndexError(
                f"unknown consistency level {self.consistency!r}; choose from {', '.join(CONSISTENCY_LEVELS)}"
            )
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", self.prefix):
            raise MilvusIndexError(f"collection prefix {self.prefix!r} must be letters, digits and _ (64 at most)")


def collection_name(prefix: str, model: str) -> str:
    """A valid, collision-free collection name for any model name: Milvus allows letters, digits
    and ``_``, so the readable part is cleaned and an 8-byte hash of the exact name follows."""
    readable = re.sub(r"[^A-Za-z0-9_]", "_", model)[:80]
    digest = hashlib.blake2b(model.encode(), digest_size=8).hexdigest()
    return f"{prefix}_{readable}_{digest}"


def _translate(e: Exception) -> Exception:
    """A lost or unreachable server is :class:`DependencyDown` (503 naming Milvus, as the database
    and Redis are); anything else is Milvus refusing the request itself (:class:`MilvusIndexError`)."""
    from pymilvus.exceptions import MilvusUnavailableException

    code = getattr(e, "code", None)
    if isinstance(e, MilvusUnavailableException) or code in (2, 503) or "connect" in str(e).lower():
        return DependencyDown("milvus", e)
    return MilvusIndexError(f"Milvus refused the request: {getattr(e, 'message', None) or e}")


def _not_found(e: BaseException) -> bool:
    """Milvus's answer for a collection that does not exist (any version's wording)."""
    text = str(e).lower()
    return "collection not found" in text or "can't find collection" in text or "collection not exist" in text


class MilvusSpaces:
    """One collection per model (vector space) on one Milvus server or cluster."""

    def __init__(self, config: MilvusConfig) -> None:
        self.config = config
        self._dims: dict[str, int] = {}
        self._ensured: dict[str, int] = {}  # collections this client made or loaded (dimension)
        self._conn: Any = None
        self._lock = threading.Lock()
        self._retry_at = 0.0  # after a failed connect, none is tried again before this (monotonic)
        self._connect()  # the client connects when made: a server that is down is the same 503 as later

    @property
    def _client(self) -> Any:
        return self._conn if self._conn is not None else self._connect()

    def _connect(self) -> Any:
        """A client, connecting a new one when the last was dropped. A server that comes back
        after a crash serves new clients at once but a client made before the crash only once
        its old session has expired (about 25 s later here): so a lost server drops the client
        (:meth:`_lost`) and the next call connects again, at most once a second."""
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        with self._lock:
            if self._conn is not None:
                return self._conn
            if time.monotonic() < self._retry_at:
                raise DependencyDown("milvus", ConnectionError(f"cannot reach Milvus at {self.config.uri}"))
            c = self.config
            try:
                self._conn = MilvusClient(uri=c.uri, token=c.token, db_name=c.db_name, timeout=c.timeout_s)
            except MilvusException as e:
                self._retry_at = time.monotonic() + RECONNECT_S
                raise _translate(e) from e
            return self._conn

    def _lost(self) -> None:
        """The server went away: drop the client (the next call connects a new one)."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        self._lost()

    def _failed(self, e: Exception) -> Exception:
        err = _translate(e)
        if isinstance(err, DependencyDown):
            self._lost()
        return err

    def name(self, model: str) -> str:
        return collection_name(self.config.prefix, model)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A client call, its failures translated (:func:`_translate`). A collection another
        process dropped is forgotten here, so the next :meth:`ensure` looks again."""
        from pymilvus.exceptions import MilvusException

        try:
            return fn(*args, **kwargs)
        except MilvusException as e:
            if _not_found(e):
                self._dims.clear()
                self._ensured.clear()
            raise self._failed(e) from e

    def _read(self, model: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A search or query of one collection. A restarted server serves before it has loaded
        its collections again (it answers "collection not loaded"): load it and ask once more."""
        from pymilvus.exceptions import MilvusException

        try:
            return fn(*args, **kwargs)
        except MilvusException as e:
            if "not loaded" not in str(e):
                raise self._failed(e) from e
        self._call(self._client.load_collection, self.name(model))
        return self._call(fn, *args, **kwargs)

    def ensure(self, model: str, dim: int) -> None:
        """The model's collection, created with the configured index and loaded; an existing one
        must have this dimension. Refuses an index type the server cannot build (its answer)."""
        if int(dim) < 1:
            raise DimensionError(f"dimension must be positive, got {dim}")
        if self._ensured.get(model) == int(dim):
            return  # this process made or loaded it (a drop elsewhere shows as "not found": forget)
        name = self.name(model)
        if self._call(self._client.has_collection, name):
            have = self.dim(model)
            if have != int(dim):
                raise DimensionError(f"Milvus collection {name} holds {have}-d vectors, model {model!r} has {dim}")
            self._call(self._client.load_collection, name)
            self._ensured[model] = int(dim)
            return
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=model[:200])
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("moved_by", DataType.INT64)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=int(dim))
        index = self._client.prepare_index_params()
        index.add_index(
            field_name="vec", index_type=self.config.index_type, metric_type="IP", params=dict(self.config.index_params)
        )
        try:
            self._call(
                self._client.create_collection,
                name,
                schema=schema,
                index_params=index,
                consistency_level=self.config.consistency,
            )
        except MilvusIndexError:
            # Milvus creates the collection before it refuses the index: leave nothing behind.
            self._client.drop_collection(name)
            raise
        self._dims[model] = int(dim)
        self._ensured[model] = int(dim)

    def dim(self, model: str) -> int | None:
        if model in self._dims:
            return self._dims[model]
        name = self.name(model)
        if not self._call(self._client.has_collection, name):
            return None
        for f in self._call(self._client.describe_collection, name)["fields"]:
            if f["name"] == "vec":
                self._dims[model] = int(f["params"]["dim"])
                return self._dims[model]
        return None

    def upsert(
        self, model: str, ids: Sequence[int] | np.ndarray, vectors: np.ndarray, moved_by: int = NOT_MOVED
    ) -> None:
        """Write rows (idempotent: the same call twice leaves the same state)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        vecs = np.asarray(vectors, dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != len(ids):
            raise IndexInputError(f"upsert needs one vector per id, got {len(ids)} ids and shape {vecs.shape}")
        want = self.dim(model)
        if want is None:
            raise IndexInputError(f"no Milvus collection for model {model!r}; ensure() it first")
        if vecs.shape[1] != want:
            raise DimensionError(f"model {model!r} has {want}-d vectors, got {vecs.shape[1]}")
        name = self.name(model)
        for start in range(0, len(ids), MAX_BATCH):
            # Plain lists: pymilvus copies a vector float by float, and Python floats from one
            # ``tolist`` are cheaper to copy than numpy scalars (a 256 x 256 upsert 14 -> 10.5 ms).
            rows = [
                {"id": i, "moved_by": int(moved_by), "vec": v}
                for i, v in zip(
                    ids[start : start + MAX_BATCH].tolist(), vecs[start : start + MAX_BATCH].tolist(), strict=True
                )
            ]
            self._call(self._client.upsert, name, rows)

    def delete(self, model: str, ids: Sequence[int] | np.ndarray) -> None:
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        name = self.name(model)
        if not ids or not self._call(self._client.has_collection, name):
            return
        for start in range(0, len(ids), MAX_BATCH):
            self._call(self._client.delete, name, ids=ids[start : start + MAX_BATCH])

    def exists(self, model: str) -> bool:
        return bool(self._call(self._client.has_collection, self.name(model)))

    def drop(self, model: str) -> None:
        self._dims.pop(model, None)
        self._ensured.pop(model, None)
        self._call(self._client.drop_collection, self.name(model))

    def count(self, model: str, live_for: int | None = None) -> int:
        """Rows of the model's space, or only those searchable during upgrade ``live_for``."""
        name = self.name(model)
        if not self._call(self._client.has_collection, name):
            return 0
        filt = "" if live_for is None else f"moved_by != {int(live_for)}"
        res = self._read(model, self._client.query, name, filter=filt, output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def search(
        self, model: str, queries: np.ndarray, k: int, hide_moved_by: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (m, k), best first, padded with id -1 and score -inf: the top ``k``
        of the model's space by inner product, leaving out rows moved away by upgrade
        ``hide_moved_by``. One batched call for all ``m`` queries."""
        q = as_queries(queries)
        m = len(q)
        ids = np.full((m, k), -1, np.int64)
        scores = np.full((m, k), -np.inf, np.float32)
        name = self.name(model)
        if k < 1 or not m:
            return ids, scores

        try:
            res = self._read(
                model,
                self._client.search,
                name,
                data=[row for row in q],
                limit=int(k),
                filter="" if hide_moved_by is None else f"moved_by != {int(hide_moved_by)}",
                output_fields=[],
                search_params={"metric_type": "IP", "params": dict(self.config.search_params)},
            )
        except MilvusIndexError as e:
            if isinstance(e.__cause__, Exception) and _not_found(e.__cause__):
                return ids, scores  # no collection (yet, or dropped by a commit): nothing there
            raise
        for r, hits in enumerate(res):
            for c, hit in enumerate(hits[:k]):
                ids[r, c] = int(hit["id"])
                scores[r, c] = float(hit["distance"])
        return ids, scores

    def where(self, model: str, ids: Sequence[int], hide_moved_by: int | None = None) -> set[int]:
        """Which of ``ids`` the model's space holds (live during upgrade ``hide_moved_by``)."""
        want = [int(i) for i in ids]
        if not want:
            return set()
        filt = f"id in {want}" + ("" if hide_moved_by is None else f" and moved_by != {int(hide_moved_by)}")
        try:
            rows = self._read(model, self._client.query, self.name(model), filter=filt, output_fields=["id"])
        except MilvusIndexError as e:
            if isinstance(e.__cause__, Exception) and _not_found(e.__cause__):
                return set()
            raise
        return {int(r["id"]) for r in rows}

    def all_ids(self, model: str, hide_moved_by: int | None = None, batch: int = 10_000) -> list[int]:
        """Every id of the model's space (O(N): tests and operators only)."""
        if not self.exists(model):
            return []
        filt = "id >= 0" if hide_moved_by is None else f"moved_by != {int(hide_moved_by)}"
        it = self._read(
            model, self._client.query_iterator, self.name(model), batch_size=batch, filter=filt, output_fields=["id"]
        )
        out: list[int] = []
        try:
            while page := self._call(it.next):
                out.extend(int(r["id"]) for r in page)
        finally:
            it.close()
        return out
