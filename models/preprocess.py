"""One input pipeline for training and serving, so both see identical tensors.

Training feeds uint8 arrays through :func:`normalize_uint8`; serving feeds PIL images through
:func:`pil_to_tensor`, which converts mode and size first and then calls the same normalisation.
:func:`png_to_chw` is a shortcut to :func:`pil_to_chw` for stored PNGs that need no conversion.

The geometry (:func:`source_box`) is the one retrieval models are evaluated with: the short side
is resized to the model's input size (divided by ``crop_ratio``, e.g. 256 for a 224 crop at
0.875) and the centre is cropped, in one antialiased resize of the source region, so a photo
is never squashed. ``resize="stretch"`` keeps the older behaviour (the whole image resized to
the input size). Square images at ``crop_ratio`` 1 come out the same either way. JPEG bytes
are decoded at the smallest DCT scale (1/2, 1/4, 1/8) that still covers the crop
(:func:`draft_jpeg`): the decoder then does a fraction of the work, and every path that starts
from bytes (uploads, queries, the backfill) goes through the same call, so all of them see the
same pixels.
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


RESIZE_POLICIES = ("center_crop", "stretch")


class InputSpec(Protocol):
    """What preprocessing needs to know of a model (``ModelMeta`` satisfies it). Read-only, so a
    ``tuple[int, int]`` input size fits ``Sequence[int]``."""

    @property
    def input_channels(self) -> int: ...
    @property
    def input_size(self) -> Sequence[int]: ...
    @property
    def mean(self) -> float | Sequence[float]: ...
    @property
    def std(self) -> float | Sequence[float]: ...
    @property
    def resize(self) -> str: ...
    @property
    def crop_ratio(self) -> float: ...


def check_input_spec(meta: InputSpec) -> None:
    """ValueError naming the first field a model's preprocessing could not honour."""
    if meta.input_channels not in (1, 3):
        raise ValueError(f"input_channels must be 1 or 3, got {meta.input_channels!r}")
    size = list(meta.input_size)
    if len(size) != 2 or not all(isinstance(v, int) and 1 <= v <= 4096 for v in size):
        raise ValueError(f"input_size must be [height, width] of 1 to 4096 pixels, got {size!r}")
    for name in ("mean", "std"):
        v = getattr(meta, name)
        values = [v] if isinstance(v, int | float) else list(v)
        if len(values) not in (1, meta.input_channels) or not all(
            isinstance(x, int | float) and np.isfinite(x) for x in values
        ):
            raise ValueError(f"{name} must be a number or one number per input channel, got {v!r}")
        if name == "std" and not all(x > 0 for x in values):
            raise ValueError(f"std must be positive, got {v!r}")
    if meta.resize not in RESIZE_POLICIES:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {meta.resize!r}")
    if not isinstance(meta.crop_ratio, int | float) or not 0.1 <= meta.crop_ratio <= 1.0:
        raise ValueError(f"crop_ratio must be in [0.1, 1], got {meta.crop_ratio!r}")


def source_box(width: int, height: int, meta: InputSpec) -> tuple[float, float, float, float]:
    """The region of a ``width`` x ``height`` image that becomes the model's input: all of it
    under ``stretch``; under ``center_crop`` the centred region with the input's aspect ratio,
    ``crop_ratio`` of the short side's extent."""
    if meta.resize == "stretch":
        return 0.0, 0.0, float(width), float(height)
    h, w = int(meta.input_size[0]), int(meta.input_size[1])
    scale = max(w / width, h / height) / meta.crop_ratio  # source pixel -> resized pixel
    cw, ch = min(width, w / scale), min(height, h / scale)
    left, top = (width - cw) / 2, (height - ch) / 2
    return left, top, left + cw, top + ch


def jpeg_draft(width: int, height: int, meta: InputSpec) -> tuple[str, tuple[int, int]]:
    """What :func:`draft_jpeg` asks libjpeg for, for a ``width`` x ``height`` JPEG: the model's
    mode and the whole image's size at which the crop is exactly the model's input."""
    left, top, right, bottom = source_box(width, height, meta)
    h, w = int(meta.input_size[0]), int(meta.input_size[1])
    need = (max(1, int(np.ceil(width * w / (right - left)))), max(1, int(np.ceil(height * h / (bottom - top)))))
    return ("L" if meta.input_channels == 1 else "RGB"), need


def jpeg_scale(width: int, height: int, need: tuple[int, int]) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) libjpeg decodes at for ``need`` (Pillow's
    ``JpegImageFile.draft`` rule: the largest that still keeps at least ``need``). Two models
    whose drafts land on the same scale and mode share one decode."""
    fit = min(width // max(1, need[0]), height // max(1, need[1]))
    return next(s for s in (8, 4, 2, 1) if fit >= s or s == 1)


def draft_jpeg(img: Image.Image, meta: InputSpec) -> None:
    """Before ``load()``: have libjpeg decode an opened JPEG at the smallest DCT scale whose
    crop still has at least the model's input size, in the model's mode (grey straight from
    the luma plane). Anything but a not-yet-loaded JPEG is left alone."""
    if img.format != "JPEG":  # a loaded JPEG has no tiles left, and draft() then does nothing
        return
    img.draft(*jpeg_draft(img.size[0], img.size[1], meta))


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
    box = source_box(img.size[0], img.size[1], meta)
    if img.size != (w, h) or box != (0.0, 0.0, float(img.size[0]), float(img.size[1])):
        img = img.resize((w, h), Image.Resampling.BILINEAR, box=box)
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
    if source_box(width, height, meta) != (0.0, 0.0, float(width), float(height)):
        return None  # a centre crop smaller than the image: PIL resamples it
    try:
        a = imagecodecs.png_decode(data)
    except Exception:  # noqa: BLE001 - corrupt or unusual: PIL decides, and names the error
        return None
    if a.dtype != np.uint8 or a.shape != ((h, w) if c == 1 else (h, w, 3)):
        return None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def normalize_uint8(x: torch.Tensor, meta: InputSpec) -> torch.Tensor:
    """uint8 (n,H,W) or (n,C,H,W), or float in [0,1] -> normalised float (n,C,H,W) at the model's size."""
    return standardize(to_model_input(x, meta), meta)


def to_model_input(x: torch.Tensor, meta: InputSpec, *, resize: bool = True) -> torch.Tensor:
    """uint8 or [0,1] float images -> float [0,1] (n,C,H,W) in the model's channels (grey
    repeated, or colour to luma) and, with ``resize``, at its input size (antialiased)."""
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
    if resize and tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def standardize(x: torch.Tensor, meta: InputSpec) -> torch.Tensor:
    """float [0,1] (n,C,H,W) -> (x - mean) / std with the model's (per-channel) statistics."""
    c = x.shape[1]
    return (x - channel_stat(meta.mean, c, x)) / channel_stat(meta.std, c, x)


def channel_stat(value: float | Sequence[float], channels: int, like: torch.Tensor) -> torch.Tensor:
    """A mean or std as a (1, C, 1, 1) tensor on ``like``'s device, for per-channel statistics."""
    values = [float(value)] if isinstance(value, int | float) else [float(v) for v in value]
    t = torch.tensor(values if len(values) == channels else values * channels, dtype=like.dtype, device=like.device)
    return t.view(1, channels, 1, 1)
