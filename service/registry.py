"""The model registry: which checkpoints the service knows, validated once at registration, and
a per-process cache so each checkpoint is loaded (weights read, module built) only once.

Checkpoints are registered by upload, or by a path *under the model directory* — never an
arbitrary server path, so an admin token cannot be used to make the service read (and report
errors about) any file on the machine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from sqlalchemy.orm import Session

from service.db.schema import ModelRow
from service.errors import BadRequest, Conflict, UnknownModel
from service.repositories import catalog
from service.settings import Settings

if TYPE_CHECKING:
    from models.checkpoint import LoadedModel, ModelMeta

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class InvalidCheckpoint(BadRequest):
    """An unreadable checkpoint, or a path outside the model directory."""


class IncompatibleModel(BadRequest):
    """A checkpoint whose declared compatibility the registry cannot honour."""


class ModelExists(Conflict):
    """The name is taken."""


class EncoderCache:
    """Loaded encoders by model name; thread-safe, loads each checkpoint at most once."""

    def __init__(self, device: str = "auto", warm: bool = False) -> None:
        """``warm``: prepare each encoder's batch path when it loads (workers, which encode
        batches next; the API encodes single uploads and skips it)."""
        self.device = device
        self.warm = warm
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def put(self, name: str, model: LoadedModel) -> None:
        with self._lock:
            self._models[name] = model

    def peek(self, name: str) -> LoadedModel | None:
        """The loaded encoder, or None: the hot path of a search needs no database session."""
        return self._models.get(name)

    def get(self, session: Session, name: str) -> LoadedModel:
        model = self._models.get(name)
        if model is not None:
            return model
        row = catalog.get_model(session, name)
        if row is None:
            raise UnknownModel(f"model {name!r} is not registered")
        return self.load(name, row.path)

    def load(self, name: str, path: str) -> LoadedModel:
        from models.torchscript import load_encoder

        with self._lock:  # one load per model even when many requests arrive at once
            model = self._models.get(name)
            if model is None:
                model = load_encoder(path, device=self.device)
                if self.warm:
                    model.warm_up()
                self._models[name] = model
            return model

    def release(self, name: str) -> None:
        """Forget a loaded encoder (the old model, once an upgrade is committed)."""
        with self._lock:
            self._models.pop(name, None)

    def loaded(self) -> list[str]:
        return sorted(self._models)


def resolve_model_path(settings: Settings, path: str) -> Path:
    """``path`` (relative to the model directory, or absolute) if it lies inside that directory."""
    root = settings.models_path.resolve()
    candidate = Path(path)
    if not candidate.is_absolute():
        candidate = root / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root):
        raise InvalidCheckpoint(
            f"checkpoint path must lie inside the model directory {str(root)!r} (HOTREFRESH_MODEL_DIR)"
        )
    if not resolved.is_file():
        raise InvalidCheckpoint(f"no checkpoint file at {path!r} in the model directory")
    return resolved


def save_upload(settings: Settings, stream: BinaryIO, max_bytes: int) -> Path:
    """Copy an uploaded checkpoint into the model directory under a temporary name."""
    incoming = settings.models_path / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=incoming, suffix=".pt")
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidCheckpoint(f"checkpoint upload larger than {max_bytes} bytes")
                out.write(chunk)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def parse_metadata_upload(data: bytes) -> dict[str, Any]:
    """A TorchScript encoder's metadata sent beside it: a JSON object, or a 422 that says why."""
    try:
        doc = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidCheckpoint(f"metadata is not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidCheckpoint("metadata must be a JSON object")
    return doc


def _public(message: str) -> str:
    """An error message fit for a client: no heap addresses (torch names objects by them)."""
    return _ADDRESS.sub("0x…", message)


_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")


@dataclass
class Prepared:
    """An encoder validated, loaded and ready to add (:func:`prepare`), not yet in the registry."""

    loaded: LoadedModel
    path: Path
    uploaded: bool
    metadata: dict[str, Any] | None


def prepare(
    session: Session,
    settings: Settings,
    cache: EncoderCache,
    path: Path,
    *,
    uploaded: bool,
    metadata: dict[str, Any] | None = None,
) -> Prepared:
    """Everything slow about registering, on a read-only ``session``: validate the encoder at
    ``path`` (a checkpoint, or a TorchScript encoder with ``metadata`` or the metadata it
    carries), run an uploaded TorchScript file in the sandbox, load it, and check its name and
    declared compatibility. Why apart from :func:`add`: this can take up to
    ``HOTREFRESH_MODEL_CHECK_SECONDS``, and no write transaction (SQLite's one write lock) may be
    held for that long. An uploaded file is deleted on failure."""
    from models.checkpoint import CheckpointError, load_checkpoint
    from models.sandbox import SandboxLimits, vet_torchscript
    from models.torchscript import is_torchscript, load_torchscript, metadata_meta, read_metadata

    scripted = is_torchscript(path)
    if metadata is not None and not scripted:
        if uploaded:
            path.unlink(missing_ok=True)
        raise InvalidCheckpoint(
            "metadata is only taken beside a TorchScript encoder; a hotrefresh checkpoint carries its own"
        )
    try:
        try:
            # A TorchScript archive is code: its name and every field are checked first, so a
            # taken name or a bad field is refused before any of it runs. (A checkpoint is data,
            # read with torch.load(weights_only=True); its name is checked once it is read.)
            doc = read_metadata(path, metadata) if scripted else None
            if doc is not None and catalog.get_model(session, metadata_meta(doc, path.name).name) is not None:
                raise ModelExists(f"a model named {doc['name']!r} is already registered")
            if scripted and uploaded:
                # Code from outside runs only in the sandbox; what is kept is what it wrote back.
                limits = SandboxLimits(settings.model_check_seconds, settings.model_check_memory_bytes)
                vetted, metadata = vet_torchscript(path, doc or {}, limits)
                path.write_bytes(vetted)
                doc = metadata
            if scripted:
                loaded = load_torchscript(path, cache.device, doc)
            else:
                loaded = load_checkpoint(path, device=cache.device)
        except CheckpointError as e:
            raise InvalidCheckpoint(_public(str(e).replace(str(path), path.name))) from e
        _check_catalog(session, loaded.meta)
    except BaseException:
        if uploaded:
            path.unlink(missing_ok=True)
        raise
    return Prepared(loaded, path, uploaded, metadata)


def _check_catalog(session: Session, meta: ModelMeta) -> None:
    if catalog.get_model(session, meta.name) is not None:
        raise ModelExists(f"a model named {meta.name!r} is already registered")
    if meta.compatible_with is not None:
        base = catalog.get_model(session, meta.compatible_with)
        if base is None:
            raise IncompatibleModel(
                f"model {meta.name!r} declares compatibility with {meta.compatible_with!r}, which is not registered"
            )
        if base.embedding_dim != meta.embedding_dim:
            raise IncompatibleModel(
                f"model {meta.name!r} has embedding_dim {meta.embedding_dim} but the model it declares "
                f"compatibility with, {base.name!r}, has {base.embedding_dim}"
            )


def add(session: Session, settings: Settings, cache: EncoderCache, prepared: Prepared) -> tuple[ModelRow, bool]:
    r"""Add a :func:`prepare`\ d encoder to the registry in the caller's write transaction (quick:
    the checks again, a file rename, two rows). Returns the row and whether it became the serving
    model (the first one registered). An uploaded file is moved to a permanent name, with the
    metadata sent beside a TorchScript file as its sidecar, where every process reads it."""
    from models.torchscript import sidecar

    meta, path = prepared.loaded.meta, prepared.path
    try:
        _check_catalog(session, meta)  # again: another registration may have committed since
        if prepared.uploaded:
            final = settings.models_path / f"{_SAFE_NAME.sub('_', meta.name)}-{meta.content_hash[:12]}.pt"
            if prepared.metadata is not None:
                sidecar(final).write_text(json.dumps(prepared.metadata, indent=2) + "\n")
            os.replace(path, final)
            path = final
        row = catalog.add_model(
            session,
            ModelRow(
                name=meta.name,
                path=str(path.resolve()),
                arch=meta.arch,
                embedding_dim=meta.embedding_dim,
                num_classes=meta.num_classes,
                trained_with=meta.trained_with,
                compatible_with=meta.compatible_with,
                content_hash=meta.content_hash,
                meta=meta.to_dict(),
            ),
        )
    except BaseException:
        if prepared.uploaded:
            path.unlink(missing_ok=True)
        raise
    state = catalog.get_serving_state(session)
    first = state.gallery_model is None and state.query_model is None
    if first:
        catalog.set_serving_state(session, gallery_model=meta.name, query_model=meta.name)
    cache.put(meta.name, prepared.loaded)
    log.info(
        "registered model %s (%s, D=%d)%s",
        meta.name,
        meta.arch,
        meta.embedding_dim,
        " as the serving model" if first else "",
    )
    return row, first


def register(
    session: Session,
    settings: Settings,
    cache: EncoderCache,
    path: Path,
    *,
    uploaded: bool,
    metadata: dict[str, Any] | None = None,
) -> tuple[ModelRow, bool]:
    """:func:`prepare` and :func:`add` in one (write) session: for tests and tools that register a
    trusted file from the model directory. ``POST /models`` runs the two apart."""
    return add(session, settings, cache, prepare(session, settings, cache, path, uploaded=uploaded, metadata=metadata))
