"""Reading gallery images back from the image store for re-encoding, one failure per item."""

from __future__ import annotations

from collections.abc import Sequence

from PIL import Image

from service.images import decode_image
from service.imagestore import ImageStore


def load_images(store: ImageStore, keys: Sequence[str]) -> tuple[list[Image.Image | None], list[str | None]]:
    """(image or None, error or None) per key: one unreadable image must not sink its batch."""
    images: list[Image.Image | None] = []
    errors: list[str | None] = []
    for key in keys:
        try:
            images.append(decode_image(store.get(key), what=f"stored image {key[:12]}"))
            errors.append(None)
        except Exception as exc:  # noqa: BLE001 - missing file, corrupt data: this item's failure
            images.append(None)
            errors.append(f"{type(exc).__name__}: {exc}")
    return images, errors
