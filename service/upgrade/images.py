"""Reading gallery images back from the image store for re-encoding, one failure per item."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

from service.imagestore import ImageStore

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_PNG = ("PNG",)


def load_images(store: ImageStore, keys: Sequence[str]) -> tuple[list[Image.Image | None], list[str | None]]:
    """(image or None, error or None) per key: one unreadable image must not sink its batch.

    A plain PIL decode, not ``service.images.decode_image``: these bytes passed that check at
    upload, and its per-call warning filter costs about as much as the decode itself on small
    images (benchmark B1). PIL's own decompression-bomb limit still applies; anything that fails
    here (a missing file, corrupt data) is recorded as this item's attempt.
    """
    images: list[Image.Image | None] = []
    errors: list[str | None] = []
    for key in keys:
        try:
            data = store.get(key)
            # Name the format when the magic bytes say PNG (what uploads mostly are): PIL then
            # skips probing its other plugins, a quarter of a small image's decode time.
            img = Image.open(io.BytesIO(data), formats=_PNG if data.startswith(_PNG_MAGIC) else None)
            img.load()  # decode now, so a truncated file fails here and not inside the encoder
            images.append(img)
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - any read or decode error is this item's failure
            images.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return images, errors
