"""Reading gallery images back for re-encoding (service.upgrade.images): the fast path's pixels equal PIL's."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.integration


def test_loaded_pixels_match_the_pil_path_and_failures_stay_per_item(tmp_path, fmnist_test) -> None:
    import io
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from models.preprocess import pil_to_chw
    from service.imagestore import LocalImageStore
    from service.upgrade.images import load_pixels
    from tests.utils.gallery import png

    meta = type(
        "Meta",
        (),
        {
            "input_channels": 1,
            "input_size": (28, 28),
            "mean": 0.0,
            "std": 1.0,
            "resize": "center_crop",
            "crop_ratio": 1.0,
        },
    )()
    a = fmnist_test[0]
    rgb = io.BytesIO()
    Image.fromarray(np.stack([a[2], a[3], a[4]], -1), "RGB").save(rgb, format="PNG")
    jpeg = io.BytesIO()
    Image.fromarray(a[5]).save(jpeg, format="JPEG")
    st = LocalImageStore(tmp_path / "images")
    keys = [
        st.put(png(a[0])),
        st.put(b"not an image"),
        st.put(rgb.getvalue()),
        st.put(png(a[1])),
        "ab" * 32,
        st.put(png(a[6])[:60]),
        st.put(jpeg.getvalue()),
    ]
    expected = np.stack([pil_to_chw(Image.open(io.BytesIO(st.get(keys[k]))), meta) for k in (0, 2, 3, 6)])
    with ThreadPoolExecutor(3) as pool:
        # one thread; then runs cut across threads at every count up to more threads than images
        for pool_, workers in [(None, 1), *((pool, n) for n in (2, 3, 4, 9))]:
            pixels, ok, errors = load_pixels(st, keys, meta, pool=pool_, workers=workers)
            assert ok == [0, 2, 3, 6], workers
            assert sorted(errors) == [1, 4, 5]
            assert "ImageNotFound" in errors[4]
            np.testing.assert_array_equal(pixels, expected)
            assert pixels.flags.c_contiguous


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow's, at open; ours refuses
def test_the_backfill_loader_refuses_images_above_the_pixel_limit_per_item(tmp_path, fmnist_test) -> None:
    from service.imagestore import LocalImageStore
    from service.upgrade.images import load_pixels
    from tests.utils.gallery import png
    from tests.utils.images import pixel_flood_png

    meta = type(
        "Meta",
        (),
        {
            "input_channels": 1,
            "input_size": (28, 28),
            "mean": 0.0,
            "std": 1.0,
            "resize": "center_crop",
            "crop_ratio": 1.0,
        },
    )()
    st = LocalImageStore(tmp_path / "images")
    a = fmnist_test[0]
    keys = [st.put(png(a[0])), st.put(pixel_flood_png()), st.put(png(a[1]))]
    _, ok, errors = load_pixels(st, keys, meta)
    assert ok == [0, 2] and "ImageTooLarge" in errors[1] and "13000x13000" in errors[1]
    # the limit is the caller's: 28 x 28 passes 784, not 783
    _, ok, errors = load_pixels(st, keys[:1], meta, max_pixels=783)
    assert ok == [] and "ImageTooLarge" in errors[0]
    assert load_pixels(st, keys[:1], meta, max_pixels=784)[1] == [0]
