"""Reading uploaded images: bounded in size before anything is decoded, and decoded completely
(not just the header) so a truncated or corrupt file is refused at upload time rather than
found later by a backfill worker."""

from __future__ import annotations

import io
import warnings
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

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
        raise ImageTooLarge(f"{what} is {w}x{h} = {w * h} pixels; the limit is {max_pixels} "
                            "(HOTREFRESH_MAX_IMAGE_PIXELS)")  # fmt: skip


def read_limited(stream: BinaryIO, max_bytes: int, what: str = "upload") -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadTooLarge(
            f"{what} is larger than the limit of {max_bytes} bytes (HOTREFRESH_MAX_UPLOAD_BYTES)"
        )
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
        raise ImageTooLarge(f"{what} declares more pixels than the limit of {max_pixels} "
                            f"(HOTREFRESH_MAX_IMAGE_PIXELS): {e}") from e  # fmt: skip
    except UnidentifiedImageError as e:
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
