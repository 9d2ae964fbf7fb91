"""Bring-your-own encoders: a TorchScript module plus a small JSON metadata file, and the export
of this project's own checkpoints to that format (``hotrefresh export``).

The contract a user's encoder must meet: ``forward`` takes a float batch (n, C, H, W), already
preprocessed as the metadata says (mode, input size, resize policy, mean and std, see
:mod:`models.preprocess`), and returns (n, D) embeddings; the service L2-normalises them. An
optional linear classifier head, named in the metadata as two of the module's parameters or
buffers (``weight`` (K, D), ``bias`` (K,)) and a logit ``scale``, is applied to the *normalised*
embedding (``logits = scale * v @ W.T + b``): that is what lets the uncertainty orders feed
stored old vectors through a new model's classifier. Without a head the model is still a full
citizen (gallery model, upgrade target, query-plan member, backfill encoder); only the
uncertainty orders are refused for it.

Why TorchScript: it loads without the Python class that defined the model and without Python's
pickle. It is still code (``torch.jit.load`` runs an archive's ``__setstate__``, and TorchScript
can map host files with ``torch.from_file``): this module loads archives the service trusts (the
model directory, and what :mod:`models.sandbox` wrote back after vetting an upload).
Registration runs a blank batch and a noise batch and checks the output's shape, that it is
finite and that no row has zero norm, before the model is accepted. ONNX (through onnxruntime)
is not offered: a second runtime for the same contract, and the backfill's background encoding
(``models.runtime``) is built on TorchScript's fork; uploads from outside go through the
sandbox instead (docs/models.md).

The metadata: ``name``, ``embedding_dim``, ``input_channels``, ``input_size`` ([H, W]),
``mean``/``std`` (one number, or one per channel), optionally ``resize`` (``center_crop``, the
default, or ``stretch``), ``crop_ratio``, ``compatible_with``, ``trained_with``, ``arch`` (a
free label) and ``classifier`` ({"weight": name, "bias": name, "scale": number}). It travels as
a sidecar file (``encoder.pt`` + ``encoder.json``, or a separate upload) or inside the archive
as the extra file ``hotrefresh.json``; the sidecar wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.carried_map import KEY as CARRIED_KEY
from models.carried_map import CarriedMapError, carried_map
from models.checkpoint import (
    CheckpointError,
    LoadedModel,
    ModelMeta,
    _resolve_device,
    load_checkpoint,
)
from models.encoders import Encoder
from models.preprocess import standardize

META_FILE = "hotrefresh.json"  # the archive's extra file that may carry the metadata
SCRIPTED_ARCH = "torchscript"
_REQUIRED = ("name", "embedding_dim", "input_channels", "input_size", "mean", "std")
_OPTIONAL = ("resize", "crop_ratio", "compatible_with", "trained_with", "arch", "classifier")
_CHECK_BATCH = 2


class LinearHead(nn.Module):
    """A classifier head as the service uses it: ``logits = v @ W.T + b`` on unit vectors, with
    the logit scale folded into W and b (the interface of ``encoders.CosineClassifier``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight: torch.Tensor
        self.bias: torch.Tensor
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return emb @ self.weight.T + self.bias

    def effective_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight, self.bias


class ScriptedEncoder(nn.Module):
    """A user's TorchScript module behind ``Encoder``'s interface (``embedding``, ``classifier``)."""

    def __init__(self, module: torch.jit.ScriptModule, head: LinearHead | None) -> None:
        super().__init__()
        self.module = module
        self.classifier = head

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.module(x).float(), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.embedding(x)
        if self.classifier is None:
            raise CheckpointError("this encoder has no classifier head")
        return emb, self.classifier(emb)


def is_torchscript(path: str | Path) -> bool:
    """A TorchScript archive (a zip with a ``code/`` folder), as opposed to a ``torch.save`` checkpoint."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def file_hash(path: Path, metadata: dict[str, Any]) -> str:
    """sha256 over the archive's bytes and the metadata: a registry tells two encoders apart."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    h.update(json.dumps(metadata, sort_keys=True).encode())
    return h.hexdigest()


def sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def parse_metadata(doc: Any, where: str) -> dict[str, Any]:
    """The metadata document checked for the keys this format knows (CheckpointError otherwise)."""
    if not isinstance(doc, dict):
        raise CheckpointError(f"{where}: metadata must be a JSON object")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise CheckpointError(f"{where}: metadata lacks {missing}")
    unknown = sorted(set(doc) - set(_REQUIRED) - set(_OPTIONAL) - {"extra"})
    if unknown:
        raise CheckpointError(f"{where}: unknown metadata keys {unknown}; known: {list(_REQUIRED + _OPTIONAL)}")
    head = doc.get("classifier")
    if head is not None and (
        not isinstance(head, dict)
        or not {"weight", "bias"} <= set(head)
        or not isinstance(head.get("scale", 1.0), int | float)
    ):
        raise CheckpointError(f"{where}: classifier must be {{'weight': name, 'bias': name, 'scale': number}}")
    return doc


def read_metadata(path: Path, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata given, else the sidecar ``.json``, else the archive's ``hotrefresh.json``."""
    if metadata is not None:
        return parse_metadata(metadata, path.name)
    side = sidecar(path)
    try:
        if side.is_file():
            return parse_metadata(json.loads(side.read_text()), side.name)
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.endswith(f"/extra/{META_FILE}")]
            if not names:
                raise CheckpointError(
                    f"{path.name}: a TorchScript encoder needs its metadata: a {side.name} beside it, or "
                    f"the archive's extra file {META_FILE}"
                )
            return parse_metadata(json.loads(z.read(names[0])), path.name)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path.name}: metadata is not valid JSON: {e}") from e


def metadata_meta(doc: dict[str, Any], where: str, num_classes: int = 0, content_hash: str = "") -> ModelMeta:
    """The metadata document as a validated ModelMeta, before (or without) loading the archive:
    the registry checks the name and every field of an upload before any of its code runs."""
    try:
        meta = ModelMeta(
            name=doc["name"],
            arch=str(doc.get("arch", SCRIPTED_ARCH)),
            embedding_dim=doc["embedding_dim"],
            num_classes=num_classes,
            trained_with=doc.get("trained_with", "external"),
            compatible_with=doc.get("compatible_with"),
            input_channels=doc["input_channels"],
            input_size=tuple(doc["input_size"]),
            mean=doc["mean"],
            std=doc["std"],
            resize=doc.get("resize", "center_crop"),
            crop_ratio=doc.get("crop_ratio", 1.0),
            content_hash=content_hash,
            extra={"format": "torchscript", "metadata": doc, **_carried(doc, where)},
        )
        meta.validate()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: bad metadata: {e}") from e
    return meta


def load_torchscript(
    path: str | Path, device: str | torch.device = "auto", metadata: dict[str, Any] | None = None
) -> LoadedModel:
    """A TorchScript encoder ready to embed, after the blank-batch checks; CheckpointError names
    what is wrong (bad metadata, unloadable archive, wrong output shape, NaN, zero norm, a head
    that does not fit)."""
    path = Path(path)
    doc = read_metadata(path, metadata)
    metadata_meta(doc, path.name)  # every field checked before the archive is opened
    dev = _resolve_device(device)
    try:
        module = torch.jit.load(str(path), map_location=dev)
    except Exception as e:
        raise CheckpointError(f"{path.name} is not a loadable TorchScript archive: {e}") from e
    module.eval()
    head_doc = doc.get("classifier")
    head = _head(module, head_doc, path.name) if head_doc is not None else None
    meta = metadata_meta(doc, path.name, 0 if head is None else int(head.weight.shape[0]), file_hash(path, doc))
    if head is not None and tuple(head.weight.shape[1:]) != (meta.embedding_dim,):
        raise CheckpointError(
            f"{path.name}: classifier weight is {tuple(head.weight.shape)}, expected (classes, {meta.embedding_dim})"
        )
    encoder = ScriptedEncoder(module, head)
    _check_outputs(encoder, meta, dev, path.name)
    return LoadedModel(encoder, meta, dev)  # type: ignore[arg-type]


def _head(module: torch.jit.ScriptModule, doc: dict[str, Any], where: str) -> LinearHead:
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    got = []
    for key in ("weight", "bias"):
        t = tensors.get(str(doc[key]))
        if t is None and hasattr(module, str(doc[key])):  # a vetted archive's head (models.sandbox)
            t = attr if isinstance(attr := getattr(module, str(doc[key])), torch.Tensor) else None
        if t is None:
            raise CheckpointError(
                f"{where}: classifier {key} {doc[key]!r} is not a parameter or buffer of the "
                f"module (it has {sorted(tensors)[:20]})"
            )
        got.append(t.detach().float())
    w, b = got
    if w.ndim != 2 or b.shape != (w.shape[0],) or w.shape[0] < 1:
        raise CheckpointError(
            f"{where}: classifier weight {tuple(w.shape)} and bias {tuple(b.shape)} do not form a (K, D) / (K,) head"
        )
    scale = float(doc.get("scale", 1.0))
    return LinearHead(w * scale, b * scale)


@torch.inference_mode()
def _check_outputs(encoder: ScriptedEncoder, meta: ModelMeta, device: torch.device, where: str) -> None:
    c, (h, w) = meta.input_channels, meta.input_size
    gen = torch.Generator().manual_seed(0)
    batches = {
        "a blank batch": torch.zeros(_CHECK_BATCH, c, h, w),
        "a noise batch": torch.rand(_CHECK_BATCH, c, h, w, generator=gen),
    }
    for what, x in batches.items():
        try:
            out = encoder.module(standardize(x, meta).to(device))
        except Exception as e:
            raise CheckpointError(f"{where}: forward failed on {what} of shape {tuple(x.shape)}: {e}") from e
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (_CHECK_BATCH, meta.embedding_dim):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise CheckpointError(
                f"{where}: on {what} the encoder returned {shape}, expected "
                f"({_CHECK_BATCH}, {meta.embedding_dim}) (embedding_dim in the metadata)"
            )
        if not torch.isfinite(out).all():
            raise CheckpointError(f"{where}: the encoder returned non-finite values on {what}")
        if (out.float().norm(dim=1) <= 1e-12).any():
            raise CheckpointError(f"{where}: the encoder returned a zero-norm embedding on {what}")


class _Exported(nn.Module):
    """What ``hotrefresh export`` scripts: the embedding of a preprocessed float batch, and the
    head with its scale folded in, as buffers the metadata names."""

    def __init__(self, model: Encoder) -> None:
        super().__init__()
        self.backbone, self.embed = model.backbone, model.embed
        w, b = model.classifier.effective_weights()
        self.register_buffer("classifier_weight", w.clone())
        self.register_buffer("classifier_bias", b.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(self.backbone(x)), dim=1)


def _carried(doc: dict[str, Any], where: str) -> dict[str, Any]:
    """The old->new map the metadata's ``extra`` carries (models/carried_map.py), checked, as the
    ModelMeta ``extra`` entry a vector-only upgrade reads; {} when it carries none."""
    extra = doc.get("extra")
    if not isinstance(extra, dict) or CARRIED_KEY not in extra:
        return {}
    try:
        carried_map(extra)
    except CarriedMapError as e:
        raise CheckpointError(f"{where}: {e}") from None
    return {CARRIED_KEY: extra[CARRIED_KEY]}


def export_metadata(meta: ModelMeta) -> dict[str, Any]:
    """A checkpoint's metadata in this format's terms (with the old->new map it carries, if any)."""
    carried = {"extra": {CARRIED_KEY: meta.extra[CARRIED_KEY]}} if CARRIED_KEY in meta.extra else {}
    return {
        **carried,
        "name": meta.name,
        "arch": meta.arch,
        "embedding_dim": meta.embedding_dim,
        "input_channels": meta.input_channels,
        "input_size": list(meta.input_size),
        "mean": meta.mean,
        "std": meta.std,
        "resize": meta.resize,
        "crop_ratio": meta.crop_ratio,
        "compatible_with": meta.compatible_with,
        "trained_with": meta.trained_with,
        "classifier": {"weight": "classifier_weight", "bias": "classifier_bias", "scale": 1.0},
    }


def export_torchscript(checkpoint: str | Path, out: str | Path, *, name: str | None = None) -> dict[str, Any]:
    """Writes ``out`` (a TorchScript archive carrying its metadata) and ``out``'s sidecar ``.json``
    from a checkpoint; returns the metadata. The archive embeds the same numbers as the
    checkpoint: it is loaded and compared on a noise batch before this returns."""
    loaded = load_checkpoint(checkpoint, device="cpu")
    meta = loaded.meta if name is None else dataclasses.replace(loaded.meta, name=name)
    doc = export_metadata(meta)
    c, (h, w) = meta.input_channels, meta.input_size
    example = torch.rand(_CHECK_BATCH, c, h, w, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings on shape checks: the graph has no data-dependent flow
        scripted = torch.jit.trace(_Exported(loaded.model).eval(), standardize(example, meta), check_trace=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(out), _extra_files={META_FILE: json.dumps(doc)})
    sidecar(out).write_text(json.dumps(doc, indent=2) + "\n")
    again = load_torchscript(out, device="cpu")
    pixels = (example * 255).round().to(torch.uint8).numpy()
    if not np.allclose(again.embed_tensor(pixels), loaded.embed_tensor(pixels), atol=1e-5):
        raise CheckpointError(f"the export of {checkpoint} does not reproduce the checkpoint's embeddings")
    return doc


def load_encoder(path: str | Path, device: str | torch.device = "auto") -> LoadedModel:
    """Any encoder file the service takes: a hotrefresh checkpoint or a TorchScript encoder."""
    if is_torchscript(path):
        return load_torchscript(path, device)
    return load_checkpoint(path, device)
