"""Training of the old model (cross-entropy) and of new models (CE + a compatibility term).

Everything stays in memory as uint8 tensors (at the data's own size and channels) on the
training device; augmentation is one batched affine warp per view that also resamples to the
model's input size: a random shift and horizontal flip by default, or the paper's random
resized crop and flip (``augment="crop"``). A small CNN trains at hundreds of images per second
on two CPU cores without a data-loader process. The old model is frozen: eval mode,
``requires_grad=False``, and its features computed under ``torch.no_grad`` from a second,
independent augmentation of the same images.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.carried_map import KEY as CARRIED_KEY
from models.carried_map import fit_carried_map
from models.checkpoint import LoadedModel, ModelMeta, load_checkpoint, save_checkpoint
from models.encoders import Encoder, create_model, default_device
from models.losses import DEFAULT_LAMBDA, DEFAULT_TAU, CompatibilityLoss, bct_loss, extend_old_classifier
from models.preprocess import (
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    InputSpec,
    normalize_uint8,
    standardize,
    to_model_input,
)

log = logging.getLogger("hotrefresh.train")

# "ract+bct": RACT's term on top of BCT's, the paper's own best (App. A.5): L = CE + lam * (ract + bct).
LOSSES = ("ract", "vanilla", "bct", "ract+bct", "none")
TRAINED_WITH_OF_LOSS = {
    "ract": "ract",
    "vanilla": "vanilla",
    "bct": "bct",
    "ract+bct": "ract+bct",
    "none": "independent",
}
_CONTRASTIVE = {"ract": "ract", "vanilla": "vanilla", "ract+bct": "ract"}  # loss -> its Eq. 5/6 term


@dataclass
class TrainConfig:
    arch: str = "conv2"
    embedding_dim: int = 64
    num_classes: int = 10
    epochs: int = 3
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 5e-4
    loss: str | None = None  # None: an old model (CE only); else one of LOSSES
    tau: float = DEFAULT_TAU
    lam: float = DEFAULT_LAMBDA
    topk: int | None = None
    seed: int = 0
    max_shift: float = 1.0  # pixels of the source image (augment="shift")
    flip: bool = True
    # "shift": random shift + flip; "crop": random resized crop (area crop_scale, aspect 3/4-4/3)
    # + flip, the paper's augmentation.
    augment: str = "shift"
    crop_scale: tuple[float, float] = (0.25, 1.0)
    input_channels: int = 1
    input_size: tuple[int, int] = (28, 28)
    mean: float | list[float] = FASHION_MNIST_MEAN
    std: float | list[float] = FASHION_MNIST_STD
    arch_options: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.loss is not None and self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise ValueError("epochs >= 1, batch_size >= 2 and lr > 0 are required")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {self.augment!r}; choose one of {', '.join(AUGMENTATIONS)}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")


AUGMENTATIONS = ("shift", "crop")


def augment(
    x: torch.Tensor,
    gen: torch.Generator,
    max_shift: float,
    flip: bool,
    *,
    out_size: tuple[int, int] | None = None,
    crop_scale: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Float [0,1] (n,C,H,W) -> a randomly warped copy at ``out_size`` (default: the input's):
    shifted by up to ``max_shift`` source pixels (zero fill), or with ``crop_scale`` a random
    resized crop (area fraction in the range, aspect ratio 3/4 to 4/3, inside the image); then
    flipped left-right with probability 1/2 if ``flip``. One ``grid_sample`` does all of it."""
    n, c, h, w = x.shape
    dev = x.device
    oh, ow = out_size or (h, w)
    sx, sy = torch.ones(n, device=dev), torch.ones(n, device=dev)
    if crop_scale is not None:
        lo, hi = crop_scale
        area = lo + (hi - lo) * torch.rand(n, generator=gen, device=dev)
        log_r = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * math.log(4 / 3)
        sx = torch.sqrt(area * log_r.exp()).clamp(max=1.0)  # crop width / image width
        sy = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
        cx = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - sx)  # centre, in [-1, 1] units
        cy = (torch.rand(n, generator=gen, device=dev) * 2 - 1) * (1 - sy)
    else:
        shift = (torch.rand(n, 2, generator=gen, device=dev) * 2 - 1) * max_shift
        cx, cy = shift[:, 0] * 2 / w, shift[:, 1] * 2 / h
    if flip:
        sx = torch.where(torch.rand(n, generator=gen, device=dev) < 0.5, -sx, sx)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 1, 1] = sx, sy
    theta[:, 0, 2], theta[:, 1, 2] = cx, cy
    grid = F.affine_grid(theta, [n, c, oh, ow], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _view(xb: torch.Tensor, spec: InputSpec, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """One augmented, normalised view of a uint8 batch as ``spec``'s model takes it."""
    x = to_model_input(xb, spec, resize=False)
    size = (int(spec.input_size[0]), int(spec.input_size[1]))
    crop = cfg.crop_scale if cfg.augment == "crop" else None
    return standardize(augment(x, gen, cfg.max_shift, cfg.flip, out_size=size, crop_scale=crop), spec)


@torch.no_grad()
def _bct_head(
    old_net: Encoder,
    old: LoadedModel,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    old_classes: np.ndarray | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen old classifier, extended to classes it never saw with their mean old features."""
    w, b = old_net.classifier.effective_weights()
    if old_classes is None:
        return w, b
    seen = {int(c) for c in old_classes}
    means: dict[int, torch.Tensor] = {}
    for c in torch.unique(y_all).tolist():
        if c in seen:
            continue
        idx = torch.nonzero(y_all == c).flatten()[:2048]
        feats = [old_net.embedding(normalize_uint8(x_all[idx[i : i + 512]], old.meta)) for i in range(0, len(idx), 512)]
        means[c] = torch.cat(feats).mean(0)
    return extend_old_classifier(w, b, torch.as_tensor(sorted(seen), device=w.device), means)


def _spec(cfg: TrainConfig) -> ModelMeta:
    """The input side of the model being trained, as its checkpoint will describe it."""
    return ModelMeta(
        name="training",
        arch=cfg.arch,
        embedding_dim=cfg.embedding_dim,
        num_classes=cfg.num_classes,
        input_channels=cfg.input_channels,
        input_size=cfg.input_size,
        mean=cfg.mean,
        std=cfg.std,
    )


def train_encoder(
    images: np.ndarray,
    labels: np.ndarray,
    cfg: TrainConfig,
    *,
    old: LoadedModel | None = None,
    old_classes: np.ndarray | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    desc: str = "train",
) -> tuple[Encoder, list[dict[str, float]]]:
    """Trains one encoder; returns it (eval mode, on CPU) and one stats dict per epoch."""
    cfg.validate()
    if cfg.loss is not None and old is None:
        raise ValueError(f"loss {cfg.loss!r} trains a new model and needs the old model")
    if len(images) != len(labels) or len(images) < 2:
        raise ValueError(f"need >= 2 images with one label each, got {len(images)} and {len(labels)}")
    device = device or default_device()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    cpu_gen = torch.Generator().manual_seed(cfg.seed)

    model = create_model(cfg.arch, cfg.embedding_dim, cfg.num_classes, cfg.input_channels, **cfg.arch_options).to(
        device
    )
    x_all = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
    if old is not None:
        if old.meta.embedding_dim != cfg.embedding_dim:
            raise ValueError(
                f"old model has embedding_dim {old.meta.embedding_dim}, new {cfg.embedding_dim}: "
                "compatible models must share the embedding space"
            )
        old_net = old.model.to(device).eval()
        for p in old_net.parameters():
            p.requires_grad_(False)
    spec = _spec(cfg)
    kind = _CONTRASTIVE.get(cfg.loss or "")
    comp = CompatibilityLoss(kind, cfg.tau, cfg.topk) if kind is not None else None
    if cfg.loss in ("bct", "ract+bct"):
        assert old is not None  # checked above: every cfg.loss needs the old model
        old_w, old_b = _bct_head(old_net, old, x_all, y_all, old_classes)

    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    steps_per_epoch = math.ceil(len(x_all) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )

    history: list[dict[str, float]] = []
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=cpu_gen).to(device)
        sums = {"loss": 0.0, "ce": 0.0, "comp": 0.0, "correct": 0.0, "n": 0.0}
        t0 = time.perf_counter()
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for step in bar:
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            if len(idx) < 2:
                continue
            xb, yb = x_all[idx], y_all[idx]
            x_new = _view(xb, spec, cfg, gen)
            emb, logits = model(x_new)
            ce = F.cross_entropy(logits, yb)
            comp_loss = torch.zeros((), device=device)
            if comp is not None:
                assert old is not None  # checked above: every cfg.loss needs the old model
                x_old = _view(xb, old.meta, cfg, gen)
                with torch.no_grad():
                    old_emb = old_net.embedding(x_old)
                comp_loss = comp_loss + comp(emb, old_emb, yb)
            if cfg.loss in ("bct", "ract+bct"):
                comp_loss = comp_loss + bct_loss(emb, yb, old_w, old_b)
            loss = ce + cfg.lam * comp_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            b = len(idx)
            sums["loss"] += loss.item() * b
            sums["ce"] += ce.item() * b
            sums["comp"] += comp_loss.item() * b
            sums["correct"] += (logits.argmax(1) == yb).sum().item()
            sums["n"] += b
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{sums['loss'] / sums['n']:.3f}")
        dt = time.perf_counter() - t0
        n = max(sums["n"], 1.0)
        stats = {
            "epoch": epoch + 1,
            "loss": sums["loss"] / n,
            "ce": sums["ce"] / n,
            "comp": sums["comp"] / n,
            "train_acc": sums["correct"] / n,
            "images_per_s": n / dt,
            "seconds": dt,
        }
        history.append(stats)
        line = (
            f"{desc} epoch {epoch + 1}/{cfg.epochs}: loss {stats['loss']:.4f} (ce {stats['ce']:.4f}, "
            f"comp {stats['comp']:.4f}) train acc {stats['train_acc']:.3f}, {stats['images_per_s']:.0f} img/s"
        )
        log.info(line)
        if progress:
            tqdm.write(line)
    return model.cpu().eval(), history


def train_and_save(
    images: np.ndarray,
    labels: np.ndarray,
    cfg: TrainConfig,
    out: str | Path,
    name: str,
    *,
    old_path: str | Path | None = None,
    old_classes: np.ndarray | None = None,
    device: torch.device | None = None,
    progress: bool = True,
) -> tuple[ModelMeta, list[dict[str, float]]]:
    """Trains and writes a checkpoint whose metadata records lineage and the training recipe."""
    device = device or default_device()
    old = load_checkpoint(old_path, device=device) if old_path is not None else None
    model, history = train_encoder(
        images, labels, cfg, old=old, old_classes=old_classes, device=device, progress=progress, desc=name
    )
    recipe = {k: v for k, v in asdict(cfg).items() if k not in ("extra", "input_size", "arch_options")}
    meta = ModelMeta(
        name=name,
        arch=cfg.arch,
        embedding_dim=cfg.embedding_dim,
        num_classes=cfg.num_classes,
        trained_with="classification" if cfg.loss is None else TRAINED_WITH_OF_LOSS[cfg.loss],
        compatible_with=old.meta.name if (old is not None and cfg.loss != "none") else None,
        input_channels=cfg.input_channels,
        input_size=cfg.input_size,
        mean=cfg.mean,
        std=cfg.std,
        arch_options=dict(cfg.arch_options),
        extra={"recipe": recipe, "n_train": len(images), "history": history, **cfg.extra},
    )
    if old is not None:
        # The old->new map a vector-only upgrade maps the gallery with (models/carried_map.py).
        carried = fit_carried_map(
            old,
            LoadedModel(model, meta, torch.device("cpu")),
            images,
            from_model=old.meta.name,
            from_hash=old.meta.content_hash,
            seed=cfg.seed,
        )
        if carried is not None:
            meta.extra[CARRIED_KEY] = carried.to_dict()
    return save_checkpoint(model, meta, out), history
