"""Real, decodable test images that are not Fashion-MNIST."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from models.data import encode_png as png_bytes

__all__ = ["pixel_flood_png", "png_bytes", "synthetic_png"]


def pixel_flood_png(width: int = 13_000, height: int = 13_000) -> bytes:
    """A PNG of a few hundred bytes whose header declares ``width x height`` grey pixels: what a
    decompression bomb looks like to the header. Its data stream is one zero row, so a decoder
    that trusted the header would try to allocate the full canvas before finding it short."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def synthetic_png(seed: int, size: tuple[int, int] = (40, 32), mode: str = "RGB") -> bytes:
    """A real, decodable PIL image unlike Fashion-MNIST: random colour blocks."""
    rng = np.random.default_rng(seed)
    h, w = size
    if mode == "RGB":
        arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    else:
        arr = rng.integers(0, 256, size=(h, w), dtype=np.uint8)
    return png_bytes(arr)


def count_decodes(monkeypatch) -> list[tuple[int, int]]:
    """The size of every decode PIL runs in this process from now on (``ImageFile.load`` with
    tiles left to decode), for tests that count how often an image is decoded."""
    from PIL import ImageFile

    sizes: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def counting(self: ImageFile.ImageFile):
        if self.tile:
            sizes.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    return sizes
