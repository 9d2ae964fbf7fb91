"""Reading uploaded images: bounded in size before anything is decoded, and decoded completely
(not just the header) so a truncated or corrupt file is refused at upload time rather than
found later by a backfill worker."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.preprocess import PNG_SIGNATURE, InputSpec, draft_jpeg, pil_to_chw, png_to_chw
from service.errors import BadRequest, TooLarge
from service.settings import Settings

# Decompression-bomb guard: a tiny PNG can declare a 100k x 100k canvas (the limit's why is at
# its setting). The default of callers that are not handed the configured value.
DEFAULT_MAX_PIXELS: int = Settings.model_fields["max_image_pixels"].default
# Modes the encoders' preprocessing converts to L and RGB; anything else (LAB, HSV, 16-bit
# variants, ...) is converted to RGB here or refused, never left to fail inside an encoder.
ENCODABLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F"})


class UploadTooLarge(TooLarge):
    pass


class BadImage(BadRequest):
    pass


class ImageTooLarge(TooLarge):
    pass


def check_pixels(img: Image.Image, max_pixels: int, what: str) -> None:
    """Refuse an opened (header read, nothing decoded) image above the pixel limit with a 413."""
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImage(f"{what} has unsupported dimensions {w}x{h}")
    if w * h > max_pixels:
        raise ImageTooLarge(
            f"{what} is {w}x{h} = {w * h} pixels; the limit is {max_pixels} (HOTREFRESH_MAX_IMAGE_PIXELS)"
        )


def open_stored(data: bytes, max_pixels: int, what: str = "stored image") -> Image.Image:
    """Bytes that passed :func:`decode_image` once, opened (header read and checked against the
    pixel limit, nothing decoded): a plain PIL open, without that check's per-call warning filter,
    which costs about as much as the decode of a small image (benchmark B1). The limit is checked
    again because it may have been lowered since the upload."""
    # Name the format when the magic bytes say PNG (what uploads mostly are): PIL then skips
    # probing its other plugins, a quarter of a small image's decode time.
    img = Image.open(io.BytesIO(data), formats=_PNG if data.startswith(PNG_SIGNATURE) else None)
    check_pixels(img, max_pixels, what)
    return img


_PNG = ("PNG",)


def pixels_of(data: bytes, meta: InputSpec, max_pixels: int = DEFAULT_MAX_PIXELS, what: str = "image") -> np.ndarray:
    """uint8 (C, H, W) as the model ``meta`` takes it, from an image's bytes: the one way every
    path that encodes stored or uploaded bytes (uploads, queries, scoring's probes, the backfill)
    turns them into pixels, so an image gets the same vector whichever of them encoded it.

    PNGs already in the model's mode and size are decoded by libpng straight to the array
    (``png_to_chw``); JPEGs are decoded at the smallest DCT scale that covers the model's crop
    (``draft_jpeg``); the rest through PIL, then mode, short-side resize and centre crop
    (``pil_to_chw``)."""
    h, w = int(meta.input_size[0]), int(meta.input_size[1])
    chw = png_to_chw(data, meta) if h * w <= max_pixels else None
    if chw is not None:
        return chw
    img = open_stored(data, max_pixels, what)
    draft_jpeg(img, meta)
    img.load()  # decode now, so a truncated file fails here and not inside the encoder
    if img.mode not in ENCODABLE_MODES:  # as decode_image does (it refused what this cannot convert)
        img = img.convert("RGB")
    return pil_to_chw(img, meta)


def pixel_batch(blobs: Sequence[bytes], meta: InputSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """:func:`pixels_of` for a batch of bytes already validated: uint8 (n, C, H, W)."""
    out = np.empty((len(blobs), meta.input_channels, int(meta.input_size[0]), int(meta.input_size[1])), np.uint8)
    for k, data in enumerate(blobs):
        out[k] = pixels_of(data, meta, max_pixels)
    return out


def read_limited(stream: BinaryIO, max_bytes: int, what: str = "upload") -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadTooLarge(f"{what} is larger than the limit of {max_bytes} bytes (HOTREFRESH_MAX_UPLOAD_BYTES)")
    return data


def decode_image(data: bytes, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    if not data:
        raise BadImage(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            # Our limit is the one that applies (checked below, on the header); Pillow's warning
            # fires at open, before we could name it, and its hard error only above 179 million.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
        check_pixels(img, max_pixels, what)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (BadImage, ImageTooLarge):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(
            f"{what} declares more pixels than the limit of {max_pixels} (HOTREFRESH_MAX_IMAGE_PIXELS): {e}"
        ) from e
    except UnidentifiedImageError as e:
        raise BadImage(f"{what} is not a decodable image (no image format recognised)") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
        # PIL reports truncated and corrupt data through these.
        raise BadImage(f"{what} could not be decoded: {e}") from e
    if img.mode not in ENCODABLE_MODES:
        try:
            img = img.convert("RGB")
        except (OSError, ValueError) as e:
            raise BadImage(f"{what} has colour mode {img.mode!r}, which cannot be converted to RGB: {e}") from e
    return img
