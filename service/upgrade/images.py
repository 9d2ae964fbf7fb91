"""Reading gallery images back from the image store for re-encoding, one failure per item."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from models.preprocess import InputSpec
from service.images import DEFAULT_MAX_PIXELS, pixels_of
from service.imagestore import ImageStore


def load_pixels(
    store: ImageStore, keys: Sequence[str], meta: InputSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """The images at ``keys`` as one uint8 (n, C, H, W) batch at the model's mode and size (what
    ``LoadedModel.embed_tensor`` takes), the positions in ``keys`` it holds, and an error for
    every other position: one unreadable image must not sink its batch. Pixels as
    ``service.images.pixels_of`` makes them (the upload and query paths' own).

    The pixel limit is checked on the header before decoding (an image stored before the limit
    was lowered is refused here, as at upload); anything that fails here (a missing file,
    corrupt data, too many pixels) is recorded as this item's attempt.
    """
    c, h, w = meta.input_channels, int(meta.input_size[0]), int(meta.input_size[1])
    out = np.empty((len(keys), c, h, w), np.uint8)  # filled in place: no per-image stack
    ok: list[int] = []
    errors: dict[int, str] = {}
    for k, key in enumerate(keys):
        try:
            out[len(ok)] = pixels_of(store.get(key), meta, max_pixels, "stored image")
            ok.append(k)
        except Exception as exc:  # noqa: BLE001 - any read, decode or conversion error is this item's
            errors[k] = f"{type(exc).__name__}: {exc}"
    return out[: len(ok)], ok, errors
