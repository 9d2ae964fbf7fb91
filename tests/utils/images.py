"""Real, decodable test images that are not Fashion-MNIST."""

from __future__ import annotations

import numpy as np

from models.data import encode_png as png_bytes

__all__ = ["png_bytes", "synthetic_png"]


def synthetic_png(seed: int, size: tuple[int, int] = (40, 32), mode: str = "RGB") -> bytes:
    """A real, decodable PIL image unlike Fashion-MNIST: random colour blocks."""
    rng = np.random.default_rng(seed)
    h, w = size
    if mode == "RGB":
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    else:
        arr = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    return png_bytes(arr)
