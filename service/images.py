"""Reading uploaded images: bounded in size before anything is decoded, and decoded completely
(not just the header) so a truncated or corrupt file is refused at upload time rather than
found later by a backfill worker."""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from service.errors import BadRequest, TooLarge

# Decompression-bomb guard: a tiny PNG can declare a 100k x 100k canvas.
MAX_PIXELS = 40_000_000
# Modes the encoders' preprocessing converts to L and RGB; anything else (LAB, HSV, 16-bit
# variants, ...) is converted to RGB here or refused, never left to fail inside an encoder.
ENCODABLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "I;16", "F"})


class UploadTooLarge(TooLarge):
    pass


class BadImage(BadRequest):
    pass


def read_limited(stream: BinaryIO, max_bytes: int, what: str = "upload") -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadTooLarge(
            f"{what} is larger than the limit of {max_bytes} bytes (HOTREFRESH_MAX_UPLOAD_BYTES)"
        )
    return data


def decode_image(data: bytes, what: str = "image") -> Image.Image:
    if not data:
        raise BadImage(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
            w, h = img.size
            if w < 1 or h < 1 or w * h > MAX_PIXELS:
                raise BadImage(f"{what} has unsupported dimensions {w}x{h} (at most {MAX_PIXELS} pixels)")
            img.load()
    except BadImage:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"{what} is not a decodable image: {e}") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
        # PIL reports truncated and corrupt data through these.
        raise BadImage(f"{what} could not be decoded: {e}") from e
    if img.mode not in ENCODABLE_MODES:
        try:
            img = img.convert("RGB")
        except (OSError, ValueError) as e:
            raise BadImage(f"{what} has colour mode {img.mode!r}, which cannot be converted to RGB: {e}") from e
    return img
