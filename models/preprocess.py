"""One input pipeline for training and serving, so both see identical tensors.

Training feeds uint8 arrays through :func:`normalize_uint8`; serving feeds PIL images through
:func:`pil_to_tensor`, which converts mode and size first and then calls the same normalisation.
:func:`png_to_chw` is a shortcut to :func:`pil_to_chw` for stored PNGs that need no conversion.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import imagecodecs
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530


class InputSpec(Protocol):
    """What preprocessing needs to know of a model (``ModelMeta`` satisfies it). Read-only, so a
    ``tuple[int, int]`` input size fits ``Sequence[int]``."""

    @property
    def input_channels(self) -> int: ...
    @property
    def input_size(self) -> Sequence[int]: ...
    @property
    def mean(self) -> float: ...
    @property
    def std(self) -> float: ...


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on black: Fashion-MNIST style images are light objects on a black background.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(bg, rgba)
    mode = "L" if channels == 1 else "RGB"
    return img if img.mode == mode else img.convert(mode)  # convert() to its own mode only copies


def pil_to_tensor(images: Sequence[Image.Image], meta: InputSpec) -> torch.Tensor:
    """PIL images of any mode and size -> normalised float tensor (n, C, H, W)."""
    return normalize_uint8(torch.from_numpy(pil_to_uint8(images, meta)), meta)


def pil_to_uint8(images: Sequence[Image.Image], meta: InputSpec) -> np.ndarray:
    """PIL images of any mode and size -> uint8 (n, C, H, W) at the model's mode and size: the
    per-image (Python) half of :func:`pil_to_tensor`, so a loader thread can do it while the
    encoder runs; ``LoadedModel.embed_tensor`` of the result equals ``embed_images``."""
    h, w = int(meta.input_size[0]), int(meta.input_size[1])
    out = np.empty((len(images), meta.input_channels, h, w), dtype=np.uint8)
    for k, img in enumerate(images):
        out[k] = pil_to_chw(img, meta)
    return out


def pil_to_chw(img: Image.Image, meta: InputSpec) -> np.ndarray:
    """One image of :func:`pil_to_uint8`: uint8 (C, H, W). Lets a caller fill a batch array in
    place and still fail per image."""
    if not isinstance(img, Image.Image):
        raise TypeError(f"expected a PIL image, got {type(img).__name__}")
    h, w = int(meta.input_size[0]), int(meta.input_size[1])
    img = _to_mode(img, meta.input_channels)
    if img.size != (w, h):
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_COLOR_TYPE = {1: 0, 3: 2}  # model channels -> the PNG colour type that is already that mode (L, RGB)


def png_to_chw(data: bytes, meta: InputSpec) -> np.ndarray | None:
    """uint8 (C, H, W) straight from PNG bytes, equal to ``pil_to_chw(Image.open(data))``; None
    where the shortcut does not apply and the caller must decode with PIL: not a PNG, not 8-bit
    grey for a one-channel model or 8-bit RGB for a three-channel one, not at the model's size,
    or anything libpng declines.

    Why: re-encoding a gallery decodes every stored image, and PIL's per-image Python plumbing
    (plugin, chunk parser, decoder set-up) costs 4-5x libpng's decode of a small PNG; that time is
    taken from the core the encoder shares with it (benchmark B1). The header decides (colour
    type and bit depth from IHDR), so only images that ``_to_mode`` and the resize would hand
    back untouched take it, and the shape check refuses anything libpng expands (a tRNS chunk
    turned into alpha): for those, the raw samples are the PIL path's pixels by definition.
    """
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    depth, color_type = data[24], data[25]
    c, h, w = meta.input_channels, int(meta.input_size[0]), int(meta.input_size[1])
    if depth != 8 or color_type != _PNG_COLOR_TYPE.get(c) or (height, width) != (h, w):
        return None
    try:
        a = imagecodecs.png_decode(data)
    except Exception:  # noqa: BLE001 - corrupt or unusual: PIL decides, and names the error
        return None
    if a.dtype != np.uint8 or a.shape != ((h, w) if c == 1 else (h, w, 3)):
        return None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def normalize_uint8(x: torch.Tensor, meta: InputSpec) -> torch.Tensor:
    """uint8 (n,H,W) or (n,C,H,W), or float in [0,1] -> normalised float (n,C,H,W) at the model's size."""
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise ValueError(f"expected images shaped (n,H,W) or (n,C,H,W), got {tuple(x.shape)}")
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    c = meta.input_channels
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and c == 1:
            luma = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
            x = (x * luma).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot map {x.shape[1]} input channels to the model's {c}")
    size = (int(meta.input_size[0]), int(meta.input_size[1]))
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return (x - meta.mean) / meta.std
