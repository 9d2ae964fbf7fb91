"""``service.images``: one decode per image for every model a request needs, the same pixels as
the backfill's path, the same refusals as before, and the per-process decode slots."""

from __future__ import annotations

import io
import threading
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from service.errors import ServiceError
from service.images import (
    BadImage,
    DecodeBusy,
    ImageTooLarge,
    decode_slot,
    pixels_for,
    pixels_of,
)
from service.settings import Settings
from tests.utils.images import count_decodes, synthetic_png


def _meta(**kw: object) -> SimpleNamespace:
    base = {
        "input_channels": 1,
        "input_size": (28, 28),
        "mean": 0.0,
        "std": 1.0,
        "resize": "center_crop",
        "crop_ratio": 1.0,
    }
    return SimpleNamespace(**{**base, **kw})


def _encoded(a: np.ndarray, fmt: str, **save: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format=fmt, **save)
    return buf.getvalue()


def _photo(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour content (JPEG's DCT scaling differs visibly on it from a full decode)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(x / (7 + c) + rng.uniform(0, 6)) * np.cos(y / (11 + c)) for c in range(3)], -1)
    return ((base + 1) * 127.5).clip(0, 255).astype(np.uint8)


METAS = {
    "grey28": _meta(),
    "rgb32": _meta(input_channels=3, input_size=(32, 32)),
    "rgb224": _meta(input_channels=3, input_size=(224, 224), crop_ratio=0.875),
    "grey64-stretch": _meta(input_size=(64, 48), resize="stretch"),
}

IMAGES = {
    "png at the grey model's size": lambda: _encoded(_photo(28, 28)[..., 0], "PNG"),
    "rgb png": lambda: synthetic_png(3, size=(90, 60)),
    "rgba png": lambda: synthetic_png(4, size=(50, 70), mode="RGBA"),
    "palette png": lambda: synthetic_png(5, size=(33, 47), mode="P"),
    "large jpeg": lambda: _encoded(_photo(900, 1300), "JPEG", quality=90),
    "grey jpeg": lambda: _encoded(_photo(400, 300)[..., 1], "JPEG"),
    "webp": lambda: _encoded(_photo(80, 120), "WEBP"),
}


@pytest.mark.parametrize("image", IMAGES)
def test_every_model_gets_the_pixels_the_backfill_path_gives_it(image: str) -> None:
    data = IMAGES[image]()
    got = pixels_for(data, METAS, "image")
    assert set(got) == set(METAS)
    for name, meta in METAS.items():
        np.testing.assert_array_equal(got[name], pixels_of(data, meta), err_msg=name)


def test_a_png_is_decoded_once_for_all_models(monkeypatch: pytest.MonkeyPatch) -> None:
    data = synthetic_png(3, size=(90, 60))
    sizes = count_decodes(monkeypatch)
    pixels_for(data, METAS, "image")
    assert len(sizes) == 1


def test_a_jpeg_is_decoded_once_per_dct_scale_and_at_reduced_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encoded(_photo(1600, 1600), "JPEG")
    sizes = count_decodes(monkeypatch)
    same_scale = {"a": _meta(input_channels=3, input_size=(32, 32)), "b": _meta(input_channels=3, input_size=(40, 40))}
    pixels_for(data, same_scale, "image")
    assert sizes == [(200, 200)]  # 1/8: both crops fit, one decode
    sizes.clear()
    two_scales = {
        "small": _meta(input_channels=3, input_size=(32, 32)),
        "big": _meta(input_channels=3, input_size=(600, 600)),
    }
    pixels_for(data, two_scales, "image")
    assert sorted(sizes) == [(200, 200), (800, 800)]


REFUSED = {
    "empty": (b"", BadImage, "is empty"),
    "not an image": (b"GIF89a this is not really an image at all", BadImage, "not a decodable image"),
    "truncated png": (synthetic_png(7, size=(64, 64))[:300], BadImage, "could not be decoded"),
    "truncated jpeg": (_encoded(_photo(200, 200), "JPEG")[:900], BadImage, "could not be decoded"),
    "over the pixel limit": (synthetic_png(1, size=(300, 200)), ImageTooLarge, "limit is 50000"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_bad_bytes_are_refused_with_a_clear_error_and_no_address(case: str) -> None:
    data, error, words = REFUSED[case]
    with pytest.raises(error) as info:
        pixels_for(data, METAS, "query image", max_pixels=50_000)
    message = str(info.value)
    assert words in message and "query image" in message
    assert " at 0x" not in message and "BytesIO" not in message


def test_the_decoded_budget_counts_pixels_after_a_jpegs_draft() -> None:
    big_png = synthetic_png(2, size=(1200, 1000))
    with pytest.raises(ImageTooLarge, match="decodes to 1000x1200"):
        pixels_for(big_png, {"m": _meta()}, "query image", max_decoded=500_000)
    # The same number of pixels as a JPEG decodes at 1/8 for a 28-pixel model: within budget.
    big_jpeg = _encoded(_photo(1000, 1200), "JPEG")
    got = pixels_for(big_jpeg, {"m": _meta()}, "query image", max_decoded=500_000)
    assert got["m"].shape == (1, 28, 28)


def test_decode_slots_refuse_with_retry_after_when_all_are_taken() -> None:
    settings = Settings(decode_slots=1, decode_wait_s=0.05)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with decode_slot(settings):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        with pytest.raises(DecodeBusy) as info, decode_slot(settings):
            pass
        assert isinstance(info.value, ServiceError) and info.value.status == 503
        assert info.value.headers is not None and "Retry-After" in info.value.headers
    finally:
        release.set()
        t.join(10)
    with decode_slot(settings):  # released: free again
        pass
