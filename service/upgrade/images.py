"""Reading gallery images back from the image store for re-encoding, one failure per item."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

import numpy as np

from models.preprocess import InputSpec
from service.images import DEFAULT_MAX_PIXELS, pixels_of
from service.imagestore import ImageStore


def load_pixels(
    store: ImageStore,
    keys: Sequence[str],
    meta: InputSpec,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    pool: Executor | None = None,
    workers: int = 1,
) -> tuple[np.ndarray, list[int], dict[int, str]]:
    """The images at ``keys`` as one uint8 (n, C, H, W) batch at the model's mode and size (what
    ``LoadedModel.embed_tensor`` takes), the positions in ``keys`` it holds, and an error for
    every other position: one unreadable image must not sink its batch. Pixels as
    ``service.images.pixels_of`` makes them (the upload and query paths' own).

    With ``workers`` > 1 the batch is cut into that many runs of consecutive images, each read,
    decoded and copied into place by one thread (the caller's and ``workers - 1`` of ``pool``'s):
    the codecs (libpng through imagecodecs, libjpeg and the resampling through Pillow) and numpy's
    copy release the GIL, so large images decode on several cores at once (benchmark
    pipeline_ceiling). One task per run, not per image: a future costs about as much as decoding
    a 28 x 28 PNG.

    The batch's bytes are fetched first, all together (``ImageStore.get_many``: an object
    store's GETs run concurrently, not one round trip after another), then decoded as above.

    The pixel limit is checked on the header before decoding (an image stored before the limit
    was lowered is refused here, as at upload); anything that fails here (a missing file,
    corrupt data, too many pixels) is recorded as this item's attempt. A store that cannot be
    reached is no item's fault: its :class:`~service.errors.DependencyDown` propagates, and the
    batch is redone once the store is back (its lease expires).
    """
    fetched = store.get_many(keys)
    c, h, w = meta.input_channels, int(meta.input_size[0]), int(meta.input_size[1])
    out = np.empty((len(keys), c, h, w), np.uint8)  # filled in place: no per-image stack
    errors: dict[int, str] = {}

    def fill(start: int, stop: int) -> dict[int, str]:
        failed: dict[int, str] = {}
        for k in range(start, stop):
            try:
                data = fetched[keys[k]]
                if isinstance(data, Exception):
                    raise data
                out[k] = pixels_of(data, meta, max_pixels, "stored image")
            except Exception as exc:  # noqa: BLE001 - any read, decode or conversion error is this item's
                failed[k] = f"{type(exc).__name__}: {exc}"
        return failed

    runs = max(1, min(workers if pool is not None else 1, len(keys)))
    bounds = [len(keys) * r // runs for r in range(runs + 1)]
    others = [pool.submit(fill, a, b) for a, b in zip(bounds[1:-1], bounds[2:], strict=True)] if pool else []
    errors = fill(bounds[0], bounds[1])  # the first run in this thread, beside the pool's
    for part in others:
        errors.update(part.result())
    if not errors:
        return out, list(range(len(keys))), errors
    ok = [k for k in range(len(keys)) if k not in errors]
    return out[ok], ok, errors
