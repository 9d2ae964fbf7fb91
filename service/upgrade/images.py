"""Reading gallery images back from the image store for re-encoding, one failure per item."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from models.preprocess import PNG_SIGNATURE, InputSpec, pil_to_chw, png_to_chw
from service.images import DEFAULT_MAX_PIXELS, check_pixels
from service.imagestore import ImageStore

_PNG = ("PNG",)


def _decode(data: bytes, max_pixels: int) -> Image.Image:
    # Name the format when the magic bytes say PNG (what uploads mostly are): PIL then skips
    # probing its other plugins, a quarter of a small image's decode time.
    # Above 89 million pixels Pillow warns at open (no filter here: B1 measures what one costs);
    # the limit that applies is ours, checked next on the header, before anything is decoded.
    img = Image.open(io.BytesIO(data), formats=_PNG if data.startswith(PNG_SIGNATURE) else None)
    check_pixels(img, max_pixels, "stored image")  # the header only: nothing decoded yet
    img.load()  # decode now, so a truncated file fails here and not inside the encoder
    return img


def load_images(
    store: ImageStore, keys: Sequence[str], max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[list[Image.Image | None], list[str | None]]:
    """(image or None, error or None) per key: one unreadable image must not sink its batch.

    A plain PIL decode, not ``service.images.decode_image``: these bytes passed that check at
    upload, and its per-call warning filter costs about as much as the decode itself on small
    images (benchmark B1). The pixel limit is checked on the header before decoding (an image
    stored before the limit was lowered is refused here, as at upload); anything that fails here
    (a missing file, corrupt data, too many pixels) is recorded as this item's attempt.
    """
    images: list[Image.Image | None] = []
    errors: list[str | None] = []
    for key in keys:
        try:
            images.append(_decode(store.get(key), max_pixels))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - any read or decode error is this item's failure
            images.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return images, errors


def load_pixels(
    store: ImageStore, keys: Sequence[str], meta: InputSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """The images at ``keys`` as one uint8 (n, C, H, W) batch at the model's mode and size (what
    ``LoadedModel.embed_tensor`` takes), the positions in ``keys`` it holds, and an error for
    every other position. Same pixels as :func:`load_images` then ``pil_to_chw``: PNGs already
    in the model's mode and size are decoded by libpng straight into the batch
    (``models.preprocess.png_to_chw``), everything else goes through PIL.
    """
    c, h, w = meta.input_channels, int(meta.input_size[0]), int(meta.input_size[1])
    out = np.empty((len(keys), c, h, w), np.uint8)  # filled in place: no per-image stack
    fast = h * w <= max_pixels  # the shortcut takes only images at the model's size
    ok: list[int] = []
    errors: dict[int, str] = {}
    for k, key in enumerate(keys):
        try:
            data = store.get(key)
            chw = png_to_chw(data, meta) if fast else None
            out[len(ok)] = chw if chw is not None else pil_to_chw(_decode(data, max_pixels), meta)
            ok.append(k)
        except Exception as exc:  # noqa: BLE001 - any read, decode or conversion error is this item's
            errors[k] = f"{type(exc).__name__}: {exc}"
    return out[: len(ok)], ok, errors
