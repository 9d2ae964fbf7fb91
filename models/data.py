"""Data sets and the paper's splits, all as seeded functions of labels so every run is reproducible.

Images stay uint8 in memory (Fashion-MNIST is 55 MB that way); normalisation happens per batch
in :mod:`models.preprocess`, the same code the service uses.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.preprocess import draft_jpeg, pil_to_chw

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
ALLOCATIONS = ("expansion", "open-data", "open-class")
DATASETS = ("fashion-mnist", "digits", "fashion-colour")
COLOUR_TRAIN_SIZE = 32  # side of "fashion-colour" as load_dataset returns it (memory: 3 KB per image)
DIGITS_TEST_FRACTION = 0.3
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def load_fashion_mnist(split: str = "train", root: str | Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels int64 (N,)) from Debian's ``dataset-fashion-mnist`` files."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    img_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not img_path.exists():
        raise FileNotFoundError(
            f"{img_path} not found: install Debian's dataset-fashion-mnist package (`make setup` does)"
        )
    images = _read_idx(img_path)
    labels = _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_digits(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled handwritten digits (1,797 8 x 8 images, 10 classes, nothing
    downloaded), scaled to 28 x 28 uint8 so the Fashion-MNIST models take them unchanged.

    The second data set of every quality claim: a different domain (pen strokes, not garments)
    with few images. The split is fixed (seed 0, 30% of each class held out) so a test image is
    never trained on, whatever the experiment's seed."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as exc:  # an optional extra, as the README says
        raise ImportError("the digits data set needs scikit-learn: pip install -e '.[datasets]'") from exc
    d = sk_load_digits()
    raw = np.clip(np.asarray(d.images) * (255.0 / 16.0), 0, 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(im).resize((28, 28), Image.Resampling.BILINEAR)) for im in raw])
    labels = np.asarray(d.target, np.int64)
    rng = np.random.default_rng(0)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[rng.permutation(idx)[: round(DIGITS_TEST_FRACTION * len(idx))]] = True
    keep = test if split == "test" else ~test
    return images[keep], labels[keep]


def colourize(grey: np.ndarray, size: int, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """Colour photographs made from Fashion-MNIST with nothing downloaded: each garment (its grey
    value as the alpha) is tinted with a random colour and laid over a random crop of one of
    scikit-learn's two bundled photos (``load_sample_images``: a temple, a flower), dimmed.
    uint8 (N, 3, size, size); the colours and crops are a seeded function of the row.

    Why: the service's colour path (RGB decode, JPEG, 3-channel models) needs colour images
    with real-photo statistics, and a label must not be readable from the colour: tint and
    background are drawn independently of the class, so a model has to see the shape."""
    import torch
    import torch.nn.functional as F

    try:
        from sklearn.datasets import load_sample_images
    except ImportError as exc:
        raise ImportError("the fashion-colour data set needs scikit-learn: pip install -e '.[datasets]'") from exc
    photos = torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2).float() / 255.0
    photos = F.interpolate(photos, size=(214, 320), mode="bilinear", antialias=True, align_corners=False)
    rng = np.random.default_rng([seed, len(grey)])
    n = len(grey)
    hue = rng.random(n)
    sat = rng.uniform(0.4, 1.0, n)
    # HSV (value 1) -> RGB, vectorised
    k = (np.stack([5.0, 3.0, 1.0])[None] + hue[:, None] * 6) % 6
    tint = 1 - sat[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)
    which = rng.integers(0, len(photos), n)
    side = rng.uniform(0.2, 0.6, n)  # crop side as a fraction of the photo's height
    cx, cy = rng.uniform(-1, 1, n), rng.uniform(-1, 1, n)
    out = np.empty((n, 3, size, size), np.uint8)
    for i in range(0, n, chunk):
        sl = slice(i, min(n, i + chunk))
        m = sl.stop - sl.start
        g = torch.from_numpy(np.ascontiguousarray(grey[sl])).float().unsqueeze(1) / 255.0
        alpha = F.interpolate(g, size=(size, size), mode="bilinear", align_corners=False)
        theta = torch.zeros(m, 2, 3)
        sx = torch.from_numpy(side[sl] * 214 / 320).float()
        sy = torch.from_numpy(side[sl]).float()
        theta[:, 0, 0], theta[:, 1, 1] = sx, sy
        theta[:, 0, 2] = torch.from_numpy(cx[sl]).float() * (1 - sx)
        theta[:, 1, 2] = torch.from_numpy(cy[sl]).float() * (1 - sy)
        grid = F.affine_grid(theta, [m, 3, size, size], align_corners=False)
        bg = F.grid_sample(photos[torch.from_numpy(which[sl])], grid, mode="bilinear", align_corners=False)
        fg = alpha * torch.from_numpy(tint[sl]).float().view(m, 3, 1, 1)
        rgb = alpha * fg + (1 - alpha) * 0.6 * bg
        out[sl] = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    return out


def augmented_copy(images: np.ndarray, copy: int, seed: int = 0) -> np.ndarray:
    """Copy number ``copy`` of uint8 images (N, H, W) or (N, C, H, W): copy 0 is the images
    themselves; every other copy a seeded shift (up to 2 pixels, edge values repeated), a
    left-right flip of half the images and a brightness change of up to 20%: how a gallery of a
    million real images is made from Fashion-MNIST's 70,000 without downloading anything."""
    if copy == 0:
        return images
    rng = np.random.default_rng([seed, copy, len(images)])
    n = len(images)
    out = np.empty_like(images)
    dy, dx = rng.integers(-2, 3, n), rng.integers(-2, 3, n)
    flip = rng.random(n) < 0.5
    gain = rng.uniform(0.8, 1.2, n)
    h, w = images.shape[-2:]
    for k in range(n):
        rows = np.clip(np.arange(h) - dy[k], 0, h - 1)
        cols = np.clip(np.arange(w) - dx[k], 0, w - 1)
        a = images[k][..., rows, :][..., cols]
        if flip[k]:
            a = a[..., ::-1]
        out[k] = np.clip(a.astype(np.float32) * gain[k] + 0.5, 0, 255).astype(np.uint8)
    return out


def load_dataset(name: str, split: str = "train", root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8, labels) of one of ``DATASETS``: (N, 28, 28) grey, or for ``fashion-colour``
    (N, 3, 32, 32) colour (:func:`colourize`, seeded by the split); ``root`` is Fashion-MNIST's folder."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root) if root else load_fashion_mnist(split)
    if name == "digits":
        return load_digits(split)
    if name == "fashion-colour":
        grey, labels = load_fashion_mnist(split, root) if root else load_fashion_mnist(split)
        return colourize(grey, COLOUR_TRAIN_SIZE, seed=0 if split == "train" else 1), labels
    raise ValueError(f"unknown data set {name!r}; choose from {', '.join(DATASETS)}")


def load_image_folder(
    root: str | Path, *, size: tuple[int, int] = (28, 28), channels: int = 1
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``root/<class>/<image>`` -> (uint8 (N,H,W) or (N,3,H,W), labels, class names sorted), each
    image resized and centre-cropped to ``size`` as the service's preprocessing does.

    Unreadable files are an error naming the file, not silently skipped: a training set that
    quietly loses images is worse than one that refuses to load.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected root/<class>/<image>)")
    spec = SimpleNamespace(input_channels=channels, input_size=size, resize="center_crop", crop_ratio=1.0)
    arrays, labels = [], []
    for ci, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(f) as src:
                    draft_jpeg(src, spec)
                    a = pil_to_chw(src, spec)
            except (UnidentifiedImageError, OSError) as e:
                raise ValueError(f"cannot read image {f}: {e}") from e
            arrays.append(a[0] if channels == 1 else a)
            labels.append(ci)
    if not arrays:
        raise ValueError(f"{root} holds no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    return np.stack(arrays), np.asarray(labels, dtype=np.int64), classes


@dataclass(frozen=True)
class Allocation:
    kind: str
    old_idx: np.ndarray  # training indices of the old model
    new_idx: np.ndarray  # training indices of the new model
    old_classes: np.ndarray  # classes the old model saw


def allocate(kind: str, labels: np.ndarray, seed: int, old_fraction: float = 0.3) -> Allocation:
    """The paper's three allocations of a training set between the old and the new model.

    expansion: old on a random 30% of the images, new on all of them; open-data: old on 30% of
    each class, new on the other 70%; open-class: old on 30% of the classes, new on the rest.
    """
    if kind not in ALLOCATIONS:
        raise ValueError(f"unknown allocation {kind!r}; choose one of {', '.join(ALLOCATIONS)}")
    if not 0 < old_fraction < 1:
        raise ValueError(f"old_fraction must be in (0, 1), got {old_fraction}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = len(labels)
    classes = np.unique(labels)
    if kind == "expansion":
        old = np.sort(rng.permutation(n)[: round(old_fraction * n)])
        return Allocation(kind, old, np.arange(n), np.unique(labels[old]))
    if kind == "open-data":
        old_parts = []
        for c in classes:
            idx = np.flatnonzero(labels == c)
            old_parts.append(rng.permutation(idx)[: round(old_fraction * len(idx))])
        old = np.sort(np.concatenate(old_parts))
        new = np.setdiff1d(np.arange(n), old)
        return Allocation(kind, old, new, classes)
    n_old_classes = max(1, round(old_fraction * len(classes)))
    if n_old_classes >= len(classes):
        raise ValueError(f"open-class needs at least 2 classes, got {len(classes)}")
    old_classes = np.sort(rng.permutation(classes)[:n_old_classes])
    in_old = np.isin(labels, old_classes)
    return Allocation(kind, np.flatnonzero(in_old), np.flatnonzero(~in_old), old_classes)


def eval_split(
    labels: np.ndarray, *, n_queries: int = 2000, n_gallery: int = 8000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (query_idx, gallery_idx) drawn class-stratified from a held-out set's labels."""
    labels = np.asarray(labels)
    if n_queries < 1 or n_gallery < 1 or n_queries + n_gallery > len(labels):
        raise ValueError(f"need 1 <= queries, gallery and queries + gallery <= {len(labels)}")
    rng = np.random.default_rng(seed)
    # Interleave a per-class shuffle so any prefix is close to class-balanced.
    order = rng.permutation(len(labels))
    rank = np.empty(len(labels), np.int64)
    for c in np.unique(labels):
        members = order[labels[order] == c]
        rank[members] = np.arange(len(members))
    balanced = order[np.lexsort((rng.random(len(order)), rank[order]))]
    q = np.sort(balanced[:n_queries])
    g = np.sort(balanced[n_queries : n_queries + n_gallery])
    return q, g


def holdout_split(idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) of training indices, for tuning without touching the evaluation split."""
    idx = np.asarray(idx)
    perm = np.random.default_rng(seed).permutation(len(idx))
    n_val = round(fraction * len(idx))
    return np.sort(idx[perm[n_val:]]), np.sort(idx[perm[:n_val]])


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image array (H, W) or (H, W, C): how data sets reach the HTTP API."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()
