"""``POST /search`` and ``POST /gallery`` decode each image once, within ``/search``'s own pixel
budget, and answer a burst beyond the decode slots with 503 + ``Retry-After``."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.images import decode_slot
from service.settings import Settings
from tests.service.api.test_api import register, snapshot, upload
from tests.utils.images import count_decodes, synthetic_png
from tests.utils.wait import wait_ready


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    return count_decodes(monkeypatch)


@pytest.fixture
def tight_client(service_settings: Settings) -> Iterator[TestClient]:
    """The app with a small /search budget and one decode slot that is never waited for."""
    from service.api.app import create_app

    settings = service_settings.model_copy(
        update={"max_query_pixels": 100_000, "decode_slots": 1, "decode_wait_s": 0.0}
    )
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def _gallery(client: TestClient, headers: dict) -> None:
    register(client, headers, "old.pt")
    blobs = [synthetic_png(i, size=(40, 30)) for i in range(4)]
    r = upload(client, headers, blobs, [f"g{i}" for i in range(4)])
    assert r.status_code == 201, r.text


def test_a_search_and_an_upload_decode_each_image_once(
    client: TestClient, checkpoints: dict, admin_headers: dict, decodes: list
) -> None:
    register(client, admin_headers, "old.pt")
    decodes.clear()
    r = upload(client, admin_headers, [synthetic_png(i, size=(40, 30)) for i in range(3)], ["a", "b", "c"])
    assert r.status_code == 201, r.text
    assert len(decodes) == 3  # one per image (it was two: validation, then the model's pixels)
    decodes.clear()
    r = client.post("/search", files={"image": ("q.png", synthetic_png(9, size=(40, 30)), "image/png")})
    assert r.status_code == 200, r.text
    assert len(decodes) == 1


def test_a_query_over_the_search_budget_is_413_and_a_large_photo_jpeg_is_not(
    tight_client: TestClient, checkpoints: dict, admin_headers: dict, service_settings: Settings
) -> None:
    import io

    import numpy as np
    from PIL import Image

    _gallery(tight_client, admin_headers)
    before = snapshot(tight_client, service_settings)
    big_png = synthetic_png(3, size=(400, 400))  # 160,000 pixels decoded: over 100,000
    r = tight_client.post("/search", files={"image": ("q.png", big_png, "image/png")})
    assert r.status_code == 413, r.text
    assert "100000" in r.json()["detail"] and " at 0x" not in r.json()["detail"]
    # 1,440,000 pixels in the header, but decoded at 1/8 for a 28-pixel model: 22,500.
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), np.uint8)).save(buf, "JPEG")
    r = tight_client.post("/search", files={"image": ("q.jpg", buf.getvalue(), "image/jpeg")})
    assert r.status_code == 200, r.text
    assert snapshot(tight_client, service_settings) == before


def test_a_search_beyond_the_decode_slots_is_503_with_retry_after(
    tight_client: TestClient, checkpoints: dict, admin_headers: dict
) -> None:
    _gallery(tight_client, admin_headers)
    settings = tight_client.app.state.settings
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with decode_slot(settings):  # the process's only slot, as a concurrent decode would hold it
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)
        r = tight_client.post("/search", files={"image": ("q.png", synthetic_png(1), "image/png")})
        assert r.status_code == 503, r.text
        assert r.headers.get("Retry-After") and "decode slots" in r.json()["detail"]
    finally:
        release.set()
        t.join(10)
    r = tight_client.post("/search", files={"image": ("q.png", synthetic_png(1), "image/png")})
    assert r.status_code == 200, r.text
