"""The checkpoint format: one file, weights plus everything the service needs to use them.

The service loads a checkpoint knowing nothing of how it was trained: the metadata carries the
architecture, sizes, input normalisation and lineage (``compatible_with``), and the content hash
lets a registry tell two files with the same name apart. Loading uses ``weights_only=True`` so
a checkpoint is data, never code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.encoders import Encoder, create_model
from models.preprocess import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    check_input_spec,
    normalize_uint8,
    pil_to_tensor,
)
from models.runtime import EncodeJob, make_launcher, start_interop_pool

log = logging.getLogger(__name__)

FORMAT = "hotrefresh-checkpoint/1"
# "external": a bring-your-own encoder whose recipe the service does not know (models/torchscript.py).
TRAINED_WITH = ("classification", "vanilla", "ract", "bct", "ract+bct", "independent", "external")
# Bounds of the metadata: far above any model this service is for, far below what would make the
# loader allocate gigabytes on a file's say-so (an embedding_dim of 2e9 was a 500).
MAX_EMBEDDING_DIM = 65_536
MAX_CLASSES = 1_000_000
MAX_NAME_LEN = 128


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used, with the reason in the message."""


@dataclass
class ModelMeta:
    name: str
    arch: str
    embedding_dim: int
    num_classes: int
    trained_with: str = "classification"
    compatible_with: str | None = None
    input_channels: int = 1
    input_size: tuple[int, int] = (28, 28)
    # One value for every channel, or one per channel (ImageNet-style RGB statistics).
    mean: float | list[float] = FASHION_MNIST_MEAN
    std: float | list[float] = FASHION_MNIST_STD
    # How an image of another shape reaches input_size (models/preprocess.py): "center_crop"
    # (short side resized, centre crop of crop_ratio of it, as retrieval models are evaluated) or
    # "stretch" (resized to input_size, aspect ratio lost; what checkpoints before it did).
    resize: str = "center_crop"
    crop_ratio: float = 1.0
    # Constructor options of the architecture (width, blocks, stem of the ResNets).
    arch_options: dict[str, Any] = field(default_factory=dict)
    # Named embedding heads; v1 models have one. A later model may add a "native" head beside the
    # backward-compatible "embedding" one for per-segment query plans.
    heads: list[str] = field(default_factory=lambda: ["embedding"])
    content_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["input_size"] = list(self.input_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"name", "arch", "embedding_dim", "num_classes"} - set(d)
        if missing:
            raise CheckpointError(f"checkpoint metadata lacks {sorted(missing)}")
        d = {"resize": "stretch", **d}  # written before the field existed: they stretched
        meta = cls(**{k: v for k, v in d.items() if k in names})
        size = meta.input_size
        if not isinstance(size, list | tuple) or len(size) != 2 or not all(_is_int(v) for v in size):
            raise CheckpointError(f"checkpoint metadata: input_size must be [height, width], got {_shown(size)}")
        meta.input_size = (int(size[0]), int(size[1]))
        meta.validate()
        return meta

    def validate(self) -> None:
        """Every field typed and bounded before anything is built from it: a wrong value is a
        CheckpointError naming the field (the API's 422), never an allocation of whatever size a
        file asks for, nor another exception type (a 500)."""
        for k in ("name", "arch"):
            v = getattr(self, k)
            if not isinstance(v, str) or not v.strip() or len(v) > MAX_NAME_LEN or not v.isprintable():
                raise CheckpointError(
                    f"checkpoint metadata: {k} must be a non-empty string of printable characters, at "
                    f"most {MAX_NAME_LEN}, got {_shown(v)}"
                )
        if self.compatible_with is not None and not isinstance(self.compatible_with, str):
            raise CheckpointError(
                f"checkpoint metadata: compatible_with must be a model name or null, got {_shown(self.compatible_with)}"
            )
        if not isinstance(self.trained_with, str) or self.trained_with not in TRAINED_WITH:
            raise CheckpointError(
                f"checkpoint metadata: trained_with {_shown(self.trained_with)} not in {TRAINED_WITH}"
            )
        for k, least, most in (("embedding_dim", 1, MAX_EMBEDDING_DIM), ("num_classes", 0, MAX_CLASSES)):
            v = getattr(self, k)  # 0 classes: no classifier head
            if not _is_int(v) or not least <= v <= most:
                raise CheckpointError(
                    f"checkpoint metadata: {k} must be an integer in [{least}, {most}], got {_shown(v)}"
                )
        if not _is_int(self.input_channels) or self.input_channels not in (1, 3):
            raise CheckpointError(
                f"checkpoint metadata: input_channels must be 1 or 3, got {_shown(self.input_channels)}"
            )
        if not isinstance(self.heads, list) or not self.heads or not all(isinstance(h, str) for h in self.heads):
            raise CheckpointError("checkpoint metadata: heads must be a non-empty list of names")
        try:
            check_input_spec(self)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint metadata: {e}") from e
        if not isinstance(self.arch_options, dict) or not all(isinstance(k, str) for k in self.arch_options):
            raise CheckpointError("checkpoint metadata: arch_options must be an object")
        if not isinstance(self.extra, dict):
            raise CheckpointError("checkpoint metadata: extra must be an object")


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _shown(v: object) -> str:
    """A value for an error message: short, and never an object's repr with its address."""
    if v is None or isinstance(v, bool | int | float):
        return repr(v)
    if isinstance(v, str):
        return repr(v[:40] + "..." if len(v) > 40 else v)
    return f"a {type(v).__name__}"


def weights_hash(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in key order: identical weights give identical hashes."""
    h = hashlib.sha256()
    for k in sorted(state_dict):
        t = state_dict[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_checkpoint(model: Encoder, meta: ModelMeta, path: str | Path) -> ModelMeta:
    """Writes atomically (temp file + ``os.replace``); returns the meta with its content hash set."""
    meta.validate()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    meta = dataclasses.replace(meta, content_hash=weights_hash(state), extra=dict(meta.extra))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": FORMAT, "meta": meta.to_dict(), "state_dict": state}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return meta


def read_meta(path: str | Path) -> ModelMeta:
    """Only the metadata (still reads the file; checkpoints here are small)."""
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[ModelMeta, dict[str, torch.Tensor]]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for truncated/garbage/unsafe files
        raise CheckpointError(f"checkpoint {str(path)!r} is not a readable hotrefresh checkpoint: {e}") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        got = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise CheckpointError(f"checkpoint {str(path)!r}: expected format {FORMAT!r}, got {got!r}")
    if not isinstance(blob.get("meta"), dict) or not isinstance(blob.get("state_dict"), dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: missing meta or state_dict")
    try:
        meta = ModelMeta.from_dict(blob["meta"])
    except (TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: bad metadata: {e}") from e
    state = blob["state_dict"]
    if meta.content_hash and weights_hash(state) != meta.content_hash:
        raise CheckpointError(f"checkpoint {str(path)!r}: weights do not match content_hash (corrupt file?)")
    return meta, state


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class _Uint8Embedding(torch.nn.Module):
    """uint8 pixels at the model's own channels and size -> embedding, as one module to trace."""

    def __init__(self, model: Encoder, meta: ModelMeta) -> None:
        super().__init__()
        self.model = model
        self.meta = meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embedding(normalize_uint8(x, self.meta))


class LoadedModel:
    """A checkpoint ready to embed images: eval mode, on its device, batching internally."""

    def __init__(self, model: Encoder, meta: ModelMeta, device: torch.device, batch_size: int = 256) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.device = device
        self.batch_size = batch_size
        self._graph: torch.jit.ScriptModule | None = None
        self._launcher: torch.jit.ScriptModule | None = None  # forks the graph (models/runtime.py)
        self._graph_failed = False
        self._graph_lock = threading.Lock()

    def _uint8_graph(self, example: torch.Tensor) -> torch.jit.ScriptModule | None:
        """The forward pass traced once into a TorchScript graph, or None where tracing failed.

        Why: an eager forward re-takes the GIL between every operator, so any Python thread
        beside it (the backfill's loader and writer stages) stalls it at each of them; benchmark
        B1 measured an eager encoder at 2-3x its own time next to one image-decoding thread. A
        TorchScript graph runs the whole forward in C++ without the GIL (the same encoder lost
        about a quarter instead). The graph has no data-dependent control flow, so a trace at one
        batch size serves every batch size; results equal the eager forward's (no freezing or
        fusion that would reorder float arithmetic). ``torch.jit`` is deprecated in favour of
        ``torch.compile``/``torch.export``, which need a compiler toolchain at run time; torch is
        pinned, and any failure here falls back to the eager forward.
        """
        if self._graph is not None or self._graph_failed:
            return self._graph
        with self._graph_lock:
            if self._graph is None and not self._graph_failed:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        graph = torch.jit.trace(
                            _Uint8Embedding(self.model, self.meta).eval(), example, check_trace=False
                        )
                    self._graph = graph
                    if self.device.type == "cpu":
                        try:
                            self._launcher = make_launcher(graph)
                        except Exception:  # background encoding is optional too
                            log.warning(
                                "could not script the launcher of %s; encoding in the caller's thread",
                                self.meta.name,
                                exc_info=True,
                            )
                except Exception:  # tracing is an optimisation, never a requirement
                    log.warning("could not trace %s; encoding with the eager forward", self.meta.name, exc_info=True)
                    self._graph_failed = True
        return self._graph

    def _takes_as_is(self, x: torch.Tensor) -> bool:
        """uint8 (n,C,H,W) already at the model's channels and size: the traced graph's input."""
        c, (h, w) = self.meta.input_channels, self.meta.input_size
        return x.dtype == torch.uint8 and x.ndim == 4 and tuple(x.shape[1:]) == (c, int(h), int(w)) and len(x) > 0

    def warm_up(self) -> None:
        """Trace the graph and run it once on a blank batch, so the first real batch does not pay
        for tracing and for the first runs' kernel selection (about 0.1 s on a CPU)."""
        c, (h, w) = self.meta.input_channels, self.meta.input_size
        blank = np.zeros((self.batch_size, c, int(h), int(w)), np.uint8)
        for _ in range(2):  # TorchScript profiles the first runs before it optimises the graph
            self.embed_tensor(blank)
        self.submit_tensor(blank).result()

    @torch.inference_mode()
    def embed_tensor(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """uint8 (n,H,W)/(n,C,H,W), or float in [0,1] -> L2-normalised float32 (n, D)."""
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x if x.flags.writeable else x.copy())
        graph = self._uint8_graph(x[: self.batch_size].to(self.device)) if self._takes_as_is(x) else None
        out = [np.empty((0, self.meta.embedding_dim), np.float32)]
        for i in range(0, len(x), self.batch_size):
            xb = x[i : i + self.batch_size].to(self.device)
            emb = graph(xb) if graph is not None else self.model.embedding(normalize_uint8(xb, self.meta))
            out.append(emb.float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out))

    @torch.inference_mode()
    def submit_tensor(self, x: torch.Tensor | np.ndarray) -> EncodeJob:
        """:meth:`embed_tensor`, started in the background: the job is queued on torch's inter-op
        thread and this returns at once; ``result()`` gives the same array ``embed_tensor`` would.

        Why: a caller that queues its next batch before collecting the previous one keeps the
        encoder busy however long its own thread waits for the GIL (models/runtime.py). Input
        the traced graph does not take, a non-CPU device, or a failed trace: computed here and
        returned as a finished job. The array must not be changed until the result is in.
        """
        t = torch.from_numpy(x if x.flags.writeable else x.copy()) if isinstance(x, np.ndarray) else x
        launcher = None
        if (
            self.device.type == "cpu"
            and self._takes_as_is(t)
            and self._uint8_graph(t[: self.batch_size]) is not None
            and start_interop_pool()
        ):
            launcher = self._launcher
        if launcher is None:
            return EncodeJob.done(self.embed_tensor(t))
        return EncodeJob([launcher(t[i : i + self.batch_size]) for i in range(0, len(t), self.batch_size)])

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Any PIL images (RGB, RGBA, L, P, any size) -> L2-normalised float32 (n, D)."""
        out = [np.empty((0, self.meta.embedding_dim), np.float32)]
        for i in range(0, len(images), self.batch_size):
            xb = pil_to_tensor(images[i : i + self.batch_size], self.meta).to(self.device)
            out.append(self.model.embedding(xb).float().cpu().numpy())
        return np.ascontiguousarray(np.concatenate(out))

    @property
    def has_classifier(self) -> bool:
        """False for a bring-your-own encoder registered without its head."""
        return self.meta.num_classes > 0 and getattr(self.model, "classifier", None) is not None

    def classifier_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (C, D), b (C,)) float32 with the logit scale folded in: ``logits = v @ W.T + b``."""
        if not self.has_classifier:
            raise CheckpointError(f"model {self.meta.name!r} has no classifier head")
        w, b = self.model.classifier.effective_weights()
        return w.float().cpu().numpy(), b.float().cpu().numpy()


def load_checkpoint(path: str | Path, device: str | torch.device = "auto") -> LoadedModel:
    """Loads a checkpoint for inference; anything wrong raises :class:`CheckpointError`."""
    path = Path(path)
    meta, state = _read(path)
    try:
        model = create_model(meta.arch, meta.embedding_dim, meta.num_classes, meta.input_channels, **meta.arch_options)
    except (ValueError, RuntimeError) as e:  # RuntimeError: an allocation the options ask for failed
        raise CheckpointError(f"checkpoint {str(path)!r}: arch {meta.arch!r} with arch_options: {e}") from e
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r}: weights do not fit arch {meta.arch!r}: {e}") from e
    return LoadedModel(model, meta, _resolve_device(device))
