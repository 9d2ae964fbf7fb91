"""Reading uploaded images: bounded in size before anything is decoded, and decoded completely
(not just the header) so a truncated or corrupt file is refused at upload time rather than
found later by a backfill worker."""

from __future__ import annotations

import io
import re
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from models.preprocess import PNG_SIGNATURE, InputSpec, draft_jpeg, jpeg_draft, jpeg_scale, pil_to_chw, png_to_chw
from service.errors import BadRequest, TooLarge, Unavailable
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
    """Bytes that passed :func:`pixels_for` once, opened (header read and checked against the
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
    if img.mode not in ENCODABLE_MODES:  # as pixels_for does (it refused what this cannot convert)
        img = img.convert("RGB")
    return pil_to_chw(img, meta)


def read_limited(stream: BinaryIO, max_bytes: int, what: str = "upload") -> bytes:
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadTooLarge(f"{what} is larger than the limit of {max_bytes} bytes (HOTREFRESH_MAX_UPLOAD_BYTES)")
    return data


class DecodeBusy(Unavailable):
    """Every decode slot of this process stayed taken for the wait: the client should retry."""

    headers = {"Retry-After": "1"}


@lru_cache(maxsize=8)
def _slots(n: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(n)


@contextmanager
def decode_slot(settings: Settings) -> Iterator[None]:
    """One of ``HOTREFRESH_DECODE_SLOTS`` per process, held while a request decodes its images.

    Why: a decode's memory is proportional to its pixels (an RGBA image under the pixel limit is
    hundreds of MB with its conversions), and request threads are many; without a cap a burst of
    large valid images holds gigabytes at once. A request that waits ``decode_wait_s`` for a slot
    is answered 503 with ``Retry-After`` instead, so the peak is about slots x one image's budget
    (``docs/service.md``, "Bounded work per request")."""
    sem = _slots(settings.decode_slots)
    if not sem.acquire(timeout=settings.decode_wait_s):
        raise DecodeBusy(
            f"all {settings.decode_slots} image decode slots are busy (HOTREFRESH_DECODE_SLOTS); retry shortly"
        )
    try:
        yield
    finally:
        sem.release()


def _open(data: bytes, what: str, max_pixels: int) -> Image.Image:
    """Opened (header read, nothing decoded) and checked against the pixel limit."""
    if not data:
        raise BadImage(f"{what} is empty")
    try:
        with warnings.catch_warnings():
            # Our limit is the one that applies (checked below, on the header); Pillow's warning
            # fires at open, before we could name it, and its hard error only above 179 million.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img: Image.Image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise BadImage(f"{what} is not a decodable image (no image format recognised its header)") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
        raise BadImage(f"{what} could not be decoded: {_reason(e)}") from None
    check_pixels(img, max_pixels, what)
    return img


def _reason(e: BaseException) -> str:
    """An error's message without object reprs: PIL names its file object (``<_io.BytesIO object
    at 0x...>``) in some messages, a heap address that has no place in an answer."""
    text = _REPR.sub("the image", str(e)) or type(e).__name__
    return text[:200]


_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _load(img: Image.Image, what: str, max_pixels: int) -> Image.Image:
    """Decode an opened image completely (a truncated or corrupt file fails here, at the request,
    not later in a backfill worker), in a mode the encoders' preprocessing can convert."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(
            f"{what} declares more pixels than the limit of {max_pixels} (HOTREFRESH_MAX_IMAGE_PIXELS)"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError) as e:
        # PIL reports truncated and corrupt data through these.
        raise BadImage(f"{what} could not be decoded: {_reason(e)}") from None
    if img.mode not in ENCODABLE_MODES:
        try:
            img = img.convert("RGB")
        except (OSError, ValueError) as e:
            raise BadImage(
                f"{what} has colour mode {img.mode!r}, which cannot be converted to RGB: {_reason(e)}"
            ) from None
    return img


def pixels_for(
    data: bytes,
    metas: Mapping[str, InputSpec],
    what: str = "image",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded: int | None = None,
    limit_name: str = "",
) -> dict[str, np.ndarray]:
    """Validate an upload's or a query's bytes and give every model in ``metas`` its uint8
    (C, H, W) pixels, from one decode: the refusals of an upload (empty, not an
    image, corrupt or truncated, over the pixel limit: 422 or 413) and the same pixels as
    :func:`pixels_of` gives each model (the backfill's path), so an item gets the same vector
    whichever path encoded it.

    A JPEG is decoded at the DCT scale its models' crops need (``draft_jpeg``): models whose
    drafts land on the same scale and mode share that decode, and only models that need another
    scale decode again (each at a fraction of the full size). ``max_decoded`` bounds the pixels
    actually decoded (after the draft: a 24-megapixel phone JPEG decodes to 0.4 MP for a 224
    model), the memory budget of ``/search``; ``max_pixels`` bounds the header, as everywhere."""
    if not metas:
        return {}
    img = _open(data, what, max_pixels)
    width, height = img.size  # before any draft shrinks it
    decoded: dict[tuple[str, int] | None, Image.Image] = {}
    out: dict[str, np.ndarray] = {}
    for name, meta in metas.items():
        key: tuple[str, int] | None = None
        if img.format == "JPEG":
            mode, need = jpeg_draft(width, height, meta)
            key = (mode, jpeg_scale(width, height, need))
        if key not in decoded:
            one = img if not decoded else _open(data, what, max_pixels)
            if key is not None:
                one.draft(key[0], need)
            if max_decoded is not None and one.size[0] * one.size[1] > max_decoded:
                w, h = one.size
                raise ImageTooLarge(
                    f"{what} decodes to {w}x{h} = {w * h} pixels; the limit for this request is {max_decoded}"
                    + (f" ({limit_name})" if limit_name else "")
                )
            decoded[key] = _load(one, what, max_pixels)
        out[name] = pil_to_chw(decoded[key], meta)
    return out
