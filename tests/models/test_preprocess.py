"""The PNG shortcut (``png_to_chw``) against the PIL path it stands in for, on real images."""

from __future__ import annotations

import io
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from models.preprocess import pil_to_chw, png_to_chw

GREY = SimpleNamespace(input_channels=1, input_size=(28, 28), mean=0.0, std=1.0, resize="center_crop", crop_ratio=1.0)
COLOUR = SimpleNamespace(input_channels=3, input_size=(28, 28), mean=0.0, std=1.0, resize="center_crop", crop_ratio=1.0)


def _png(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _pil_path(data: bytes, meta: SimpleNamespace) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.load()
    return pil_to_chw(img, meta)


@pytest.fixture(scope="module")
def fashion() -> np.ndarray:
    from models.data import load_fashion_mnist

    return load_fashion_mnist("test")[0][:64]


def test_stored_grey_pngs_take_the_shortcut_with_the_pil_paths_pixels(fashion: np.ndarray) -> None:
    for a in fashion:
        data = _png(Image.fromarray(a))
        got = png_to_chw(data, GREY)
        assert got is not None, "an 8-bit grey PNG at the model's size must be decoded by libpng"
        assert got.dtype == np.uint8 and got.shape == (1, 28, 28)
        np.testing.assert_array_equal(got, _pil_path(data, GREY))


def test_rgb_pngs_take_the_shortcut_for_a_colour_model(fashion: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    for a in fashion[:16]:
        rgb = np.stack([a, rng.integers(0, 256, a.shape, dtype=np.uint8), 255 - a], axis=-1)
        data = _png(Image.fromarray(rgb, "RGB"))
        got = png_to_chw(data, COLOUR)
        assert got is not None
        np.testing.assert_array_equal(got, _pil_path(data, COLOUR))


def _info() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", struct.pack(">I", 45455))  # libpng would apply it only if asked: PIL never does
    info.add_text("Comment", "stored by a test")
    return info


def _variants(a: np.ndarray) -> dict[str, bytes]:
    grey = Image.fromarray(a)
    rgba = Image.fromarray(np.stack([a, a, a, 255 - a], axis=-1), "RGBA")
    with_trns = grey.copy()
    with_trns.info["transparency"] = 0
    return {
        "rgb for a grey model": _png(grey.convert("RGB")),
        "rgba": _png(rgba),
        "grey+alpha": _png(grey.convert("LA")),
        "palette": _png(grey.convert("P")),
        "palette with transparency": _png(rgba.convert("P")),
        "16-bit grey": _png(Image.fromarray(a.astype(np.uint16) * 257)),
        "1-bit": _png(grey.convert("1")),
        "larger": _png(grey.resize((56, 56))),
        "not square": _png(grey.resize((28, 30))),
        "grey with tRNS": _png(with_trns, transparency=0),
        "optimised": _png(grey, optimize=True),
        "with gamma and text chunks": _png(grey, pnginfo=_info()),
        "jpeg": (lambda b: (grey.save(b, format="JPEG"), b.getvalue())[1])(io.BytesIO()),
    }


@pytest.mark.parametrize("meta", [GREY, COLOUR], ids=["grey model", "colour model"])
def test_whatever_the_shortcut_returns_equals_the_pil_path(fashion: np.ndarray, meta: SimpleNamespace) -> None:
    """Shortcut or not, the pixels are the PIL path's: the shortcut only ever declines."""
    for name, data in _variants(fashion[3]).items():
        got = png_to_chw(data, meta)
        if got is not None:
            np.testing.assert_array_equal(got, _pil_path(data, meta), err_msg=name)


def test_images_that_need_converting_are_left_to_pil(fashion: np.ndarray) -> None:
    v = _variants(fashion[3])
    for name in (
        "rgb for a grey model",
        "rgba",
        "grey+alpha",
        "palette",
        "16-bit grey",
        "1-bit",
        "larger",
        "not square",
        "jpeg",
    ):
        assert png_to_chw(v[name], GREY) is None, name
    assert png_to_chw(v["rgb for a grey model"], COLOUR) is not None
    assert png_to_chw(v["with gamma and text chunks"], GREY) is not None
    assert png_to_chw(_png(Image.fromarray(fashion[3])), COLOUR) is None  # grey for a colour model: PIL converts


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_corrupt_pngs_are_declined_so_pil_names_the_error(fashion: np.ndarray) -> None:
    good = _png(Image.fromarray(fashion[0]))
    truncated = good[: len(good) // 2]
    flipped = bytearray(good)
    flipped[45] ^= 0xFF  # inside IDAT: its CRC no longer matches
    header_only = good[:33] + _chunk(b"IEND", b"")
    for data in (truncated, bytes(flipped), header_only, good[:20]):
        assert png_to_chw(data, GREY) is None
        with pytest.raises(Exception):  # noqa: B017 - whatever PIL raises is the item's recorded error
            _pil_path(data, GREY)


def _meta(**kw):
    base = {
        "input_channels": 3,
        "input_size": (32, 32),
        "mean": 0.0,
        "std": 1.0,
        "resize": "center_crop",
        "crop_ratio": 1.0,
    }
    return SimpleNamespace(**{**base, **kw})


def test_centre_crop_takes_the_middle_of_the_short_side_and_stretch_the_whole_image() -> None:
    from models.preprocess import source_box

    assert source_box(200, 100, _meta()) == (50.0, 0.0, 150.0, 100.0)
    assert source_box(100, 200, _meta(crop_ratio=0.5)) == (25.0, 75.0, 75.0, 125.0)
    assert source_box(200, 100, _meta(resize="stretch")) == (0.0, 0.0, 200.0, 100.0)
    # a wide model input from a tall image: the crop keeps the input's aspect ratio
    assert source_box(100, 200, _meta(input_size=(16, 32))) == (0.0, 75.0, 100.0, 125.0)
    # an image whose left half is red and right half blue, wider than tall: the crop keeps both
    a = np.zeros((40, 120, 3), np.uint8)
    a[:, :60, 0], a[:, 60:, 2] = 255, 255
    chw = pil_to_chw(Image.fromarray(a), _meta())
    assert chw.shape == (3, 32, 32) and chw[0, :, :8].min() == 255 and chw[2, :, -8:].min() == 255
    stretched = pil_to_chw(Image.fromarray(a), _meta(resize="stretch"))
    assert stretched[0, :, :15].min() == 255  # the whole red half, squashed into the left half


def test_jpegs_decode_at_reduced_scale_close_to_the_full_decode() -> None:
    from models.data import colourize, load_fashion_mnist
    from models.preprocess import draft_jpeg

    grey = load_fashion_mnist("test")[0][:6]
    for k, a in enumerate(colourize(grey, 256, seed=0)):
        buf = io.BytesIO()
        Image.fromarray(a.transpose(1, 2, 0)).resize((320 + 40 * k, 256)).save(buf, format="JPEG", quality=92)
        for channels in (1, 3):
            meta = _meta(input_channels=channels, input_size=(56, 56))
            img = Image.open(io.BytesIO(buf.getvalue()))
            draft_jpeg(img, meta)
            assert min(img.size) >= 56 and img.size[1] <= 128  # 256 -> 64 at 1/4: the DCT did the work
            fast = pil_to_chw(img, meta).astype(np.int16)
            full = pil_to_chw(Image.open(io.BytesIO(buf.getvalue())), meta).astype(np.int16)
            assert fast.shape == full.shape == (channels, 56, 56)
            assert np.abs(fast - full).mean() < 3.0  # a few grey levels: same picture, same crop
    png_img = Image.open(io.BytesIO(_png(Image.fromarray(grey[0]))))
    draft_jpeg(png_img, _meta())
    assert png_img.size == (28, 28)  # anything but a JPEG is left alone


def test_per_channel_statistics_normalise_each_channel() -> None:
    import torch

    from models.preprocess import normalize_uint8

    x = torch.full((1, 3, 4, 4), 255, dtype=torch.uint8)
    out = normalize_uint8(x, _meta(input_size=(4, 4), mean=[0.0, 0.5, 1.0], std=[1.0, 0.5, 0.25]))
    assert out[0, :, 0, 0].tolist() == [1.0, 1.0, 0.0]


def test_shortcut_declines_a_png_the_centre_crop_would_resample() -> None:
    a = (np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28)
    data = _png(Image.fromarray(a))
    assert png_to_chw(data, GREY) is not None
    assert png_to_chw(data, SimpleNamespace(**{**vars(GREY), "crop_ratio": 0.875})) is None


def test_webp_and_grey_jpeg_bytes_reach_a_colour_model() -> None:
    from service.images import pixels_of

    a = np.zeros((50, 70, 3), np.uint8)
    a[:, :35] = (250, 10, 10)
    for fmt, img in (("WEBP", Image.fromarray(a)), ("JPEG", Image.fromarray(a[..., 0]))):
        buf = io.BytesIO()
        img.save(buf, format=fmt, quality=95)
        chw = pixels_of(buf.getvalue(), _meta(input_size=(20, 20)))
        assert chw.shape == (3, 20, 20)
        if fmt == "WEBP":  # the red left half survives the centre crop of the 70-pixel width
            assert chw[0, :, :3].min() > 200 and chw[1, :, :3].max() < 60
        else:  # grey repeated into three equal channels
            assert (chw[0] == chw[1]).all() and (chw[1] == chw[2]).all()
