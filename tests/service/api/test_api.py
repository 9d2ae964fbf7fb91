"""The HTTP API in-process (real lifespan: SQL, Redis, index load and follower), on SQLite and
PostgreSQL, with real checkpoints and real images. Every bad input of invariant 5 that the
gallery, search and model routes own gets the right 4xx and changes nothing: not the database,
not the image store, not the index, not the index log."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import redis as redis_lib
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from service import indexlog, keys
from service.db.schema import Embedding, GalleryItem, IndexLogOutbox, ModelRow, Upgrade
from service.db.session import session_scope
from service.repositories import catalog
from service.settings import Settings
from tests.utils.images import pixel_flood_png, png_bytes, synthetic_png
from tests.utils.wait import wait_caught_up, wait_ready


def snapshot(client: TestClient, settings: Settings) -> dict:
    """Everything a request could change."""
    with session_scope(settings.sqlalchemy_url) as s:
        items = sorted((i.external_id, i.active_model, i.label) for i in s.scalars(select(GalleryItem)))
        vectors = s.scalar(select(func.count()).select_from(Embedding))
        models = sorted(s.scalars(select(ModelRow.name)))
        state = catalog.get_serving_state(s)
        serving = (state.gallery_model, state.query_model)
    root = settings.images_path
    images = sorted(p.name for p in root.rglob("*") if p.is_file()) if root.exists() else []
    model_files = sorted(
        str(p.relative_to(settings.models_path)) for p in settings.models_path.rglob("*") if p.is_file()
    )
    ready = wait_caught_up(client, settings)
    return {
        "items": items,
        "vectors": vectors,
        "models": models,
        "serving": serving,
        "images": images,
        "model_files": model_files,
        "index": ready["counts"],
        "log": ready["log_position"],
        "query_model": ready["query_model"],
    }


def register(client: TestClient, headers: dict, path: str) -> dict:
    r = client.post("/models", data={"path": path}, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def upload(client: TestClient, headers: dict, blobs: list[bytes], ids: list[str], labels: list[str] | None = None):
    files = [("image", (f"{n}.png", b, "image/png")) for n, b in enumerate(blobs)]
    data: dict = {"external_id": ids}
    if labels is not None:
        data["label"] = labels
    return client.post("/gallery", files=files, data=data, headers=headers)


@pytest.fixture
def gallery(client: TestClient, checkpoints: dict, admin_headers: dict, fmnist) -> list[str]:
    """``old`` registered and 12 Fashion-MNIST items in the gallery."""
    register(client, admin_headers, "old.pt")
    images, labels = fmnist
    ids = [f"fm-{i}" for i in range(12)]
    r = upload(
        client,
        admin_headers,
        [png_bytes(images[i]) for i in range(12)],
        ids,
        [str(int(labels[i])) for i in range(12)],
    )
    assert r.status_code == 201, r.text
    return ids


def test_first_model_serves_and_gallery_search_round_trip(
    client: TestClient, gallery: list[str], admin_headers: dict, fmnist, service_settings: Settings
) -> None:
    models = client.get("/models").json()
    assert models["gallery_model"] == models["query_model"] == "old"
    assert [m["name"] for m in models["models"]] == ["old"] and models["models"][0]["is_query_model"]

    images, labels = fmnist
    for i, ext in enumerate(gallery):
        r = client.post("/search", files={"image": ("q.png", png_bytes(images[i]), "image/png")}, params={"k": 5})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["query_model"] == "old"
        found = [h["external_id"] for h in body["results"]]
        assert found[0] == ext and len(found) == len(set(found)) == 5
        assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)

    item = client.get(f"/gallery/{gallery[3]}").json()
    assert item["model"] == item["index_model"] == "old" and item["label"] == str(int(labels[3]))
    assert item["vector_source"] == "encoded"  # from its image (mapped: docs/workers.md)
    assert item["created_at"].endswith(("Z", "+00:00"))

    assert client.delete(f"/gallery/{gallery[3]}", headers=admin_headers).status_code == 204
    assert client.get(f"/gallery/{gallery[3]}").status_code == 404
    assert client.delete(f"/gallery/{gallery[3]}", headers=admin_headers).status_code == 404
    r = client.post("/search", files={"image": ("q.png", png_bytes(images[3]), "image/png")}, params={"k": 20})
    assert gallery[3] not in [h["external_id"] for h in r.json()["results"]]
    assert client.get("/readyz").json()["counts"] == {"old": 11}
    # The raw image stays for other items with the same content; vectors went with the item.
    with session_scope(service_settings.sqlalchemy_url) as s:
        assert s.scalar(select(func.count()).select_from(Embedding)) == 11

    metrics = client.get("/metrics").text
    assert 'hotrefresh_search_requests_total{status="200"}' in metrics
    assert "hotrefresh_search_seconds_bucket" in metrics
    assert 'hotrefresh_gallery_vectors{model="old"} 11.0' in metrics


def test_metrics_leave_out_the_gauges_of_an_upgrade_that_is_not_live(client: TestClient) -> None:
    """A series this API process set for an upgrade SQL does not hold as running (here: none of
    that id at all) is dropped before the scrape (service.upgrade.gauges)."""
    from service.metrics import BACKFILL_PROGRESS, LIVE_NFR, LIVE_NFR_BOUND

    BACKFILL_PROGRESS.labels("987654").set(0.5)
    LIVE_NFR.labels("987654", "dual").set(0.2)
    LIVE_NFR_BOUND.labels("987654", "dual").set(0.05)
    text = client.get("/metrics").text
    assert 'upgrade="987654"' not in text


def test_register_by_upload_and_list(
    client: TestClient, checkpoints: dict, admin_headers: dict, service_settings: Settings
) -> None:
    register(client, admin_headers, "old.pt")
    r = client.post("/models", files={"file": ("x.pt", checkpoints["new"].read_bytes())}, headers=admin_headers)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["name"] == "new" and body["compatible_with"] == "old" and not body["is_query_model"]
    names = [m["name"] for m in client.get("/models").json()["models"]]
    assert names == ["old", "new"]
    stored = [p for p in service_settings.models_path.glob("new-*.pt")]
    assert len(stored) == 1
    assert not any((service_settings.models_path / ".incoming").iterdir())


def test_search_and_gallery_before_any_model_are_conflicts(client: TestClient, admin_headers: dict) -> None:
    r = upload(client, admin_headers, [synthetic_png(1)], ["a"])
    assert r.status_code == 409 and "POST /models" in r.json()["detail"]
    r = client.post("/search", files={"image": ("q.png", synthetic_png(1), "image/png")})
    assert r.status_code == 409 and "no model" in r.json()["detail"]


MODEL_CASES = {
    "declares compatibility with an unregistered model": (
        {"data": {"path": "orphan.pt"}},
        422,
        "not registered",
    ),
    "dimension differs from the model it is compatible with": (
        {"data": {"path": "wide.pt"}},
        422,
        "embedding_dim",
    ),
    "name already registered": ({"data": {"path": "old.pt"}}, 409, "already registered"),
    "path outside the model directory": (
        {"data": {"path": "../../../etc/passwd"}},
        422,
        "inside the model directory",
    ),
    "absolute path outside": ({"data": {"path": "/etc/hostname"}}, 422, "inside the model directory"),
    "no such file": ({"data": {"path": "missing.pt"}}, 422, "no checkpoint file"),
    "garbage upload": ({"files": {"file": ("x.pt", b"not a checkpoint at all")}}, 422, "not a readable"),
    "neither file nor path": ({"data": {}}, 422, "exactly one"),
    "both file and path": (
        {"data": {"path": "new.pt"}, "files": {"file": ("x.pt", b"x")}},
        422,
        "exactly one",
    ),
    "torchscript encoder whose output has the wrong size": (
        {"data": {"path": "user-bad.pt"}},
        422,
        "returned (2, 17), expected (2, 16)",
    ),
    "torchscript encoder without metadata": ({"data": {"path": "user-nometa.pt"}}, 422, "needs its metadata"),
    "metadata beside a path": (
        {"data": {"path": "user-nometa.pt"}, "files": {"metadata": ("m.json", b"{}")}},
        422,
        "goes with an uploaded",
    ),
    "metadata that is not JSON": (
        {"files": {"file": ("x.pt", b"x"), "metadata": ("m.json", b"{nope")}},
        422,
        "not valid JSON",
    ),
    "metadata beside a checkpoint": (
        {"files": {"file": ("x.pt", b"x"), "metadata": ("m.json", b"{}")}},
        422,
        "only taken beside a TorchScript",
    ),
    "no token": ({"data": {"path": "new.pt"}, "headers": {}}, 401, "bearer token"),
    "wrong token": ({"data": {"path": "new.pt"}, "headers": {"Authorization": "Bearer nope"}}, 403, "wrong"),
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_registrations_change_nothing(
    client: TestClient, checkpoints: dict, admin_headers: dict, service_settings: Settings, case: str
) -> None:
    register(client, admin_headers, "old.pt")
    kwargs, status, words = MODEL_CASES[case]
    kwargs = {"headers": admin_headers, **kwargs}
    before = snapshot(client, service_settings)
    r = client.post("/models", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert snapshot(client, service_settings) == before


def _truncated_png() -> bytes:
    good = synthetic_png(7, size=(64, 64))
    return good[: len(good) // 2]


def _lab_tiff() -> bytes:
    """A LAB TIFF: PIL can turn LAB into RGB but not into L, which a 1-channel encoder needs."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("LAB", (20, 20)).save(buf, format="TIFF")
    return buf.getvalue()


GALLERY_CASES = {
    "corrupt (truncated) png": (lambda: ([_truncated_png()], ["bad"]), {}, 422, "decod"),
    "not an image": (lambda: ([b"hello, I am text" * 10], ["txt"]), {}, 422, "not a decodable image"),
    "empty file": (lambda: ([b""], ["empty"]), {}, 422, "empty"),
    "pixel flood (13000 x 13000 declared)": (
        lambda: ([pixel_flood_png()], ["flood"]),
        {},
        413,
        "HOTREFRESH_MAX_IMAGE_PIXELS",
    ),
    "one bad among good": (
        lambda: ([synthetic_png(1), b"\x89PNG\r\n\x1a\nbroken", synthetic_png(2)], ["g1", "b", "g2"]),
        {},
        422,
        "image 1",
    ),
    "external id already in the gallery": (lambda: ([synthetic_png(3)], ["fm-0"]), {}, 409, "already"),
    "external id twice in one batch": (
        lambda: ([synthetic_png(3), synthetic_png(4)], ["d", "d"]),
        {},
        409,
        "repeated",
    ),
    "fewer ids than images": (
        lambda: ([synthetic_png(3), synthetic_png(4)], ["only-one"]),
        {},
        422,
        "external_id",
    ),
    "blank external id": (lambda: ([synthetic_png(3)], ["  "]), {}, 422, "blank"),
    "no token": (lambda: ([synthetic_png(3)], ["t"]), {"headers": {}}, 401, "bearer"),
    "wrong token": (
        lambda: ([synthetic_png(3)], ["t"]),
        {"headers": {"Authorization": "Bearer x"}},
        403,
        "wrong",
    ),
}


@pytest.mark.parametrize("case", list(GALLERY_CASES))
def test_bad_gallery_uploads_change_nothing(
    client: TestClient, gallery: list[str], admin_headers: dict, service_settings: Settings, case: str
) -> None:
    make, extra, status, words = GALLERY_CASES[case]
    blobs, ids = make()
    headers = extra.get("headers", admin_headers)
    before = snapshot(client, service_settings)
    r = upload(client, headers, blobs, ids)
    assert r.status_code == status, r.text
    assert words in r.json()["detail"]
    assert snapshot(client, service_settings) == before


def test_label_count_mismatch_changes_nothing(
    client: TestClient, gallery: list[str], admin_headers: dict, service_settings: Settings
) -> None:
    before = snapshot(client, service_settings)
    r = upload(client, admin_headers, [synthetic_png(5), synthetic_png(6)], ["l1", "l2"], ["only-one"])
    assert r.status_code == 422 and "labels" in r.json()["detail"]
    assert snapshot(client, service_settings) == before


TEXT_CASES = {
    "NUL in external_id": (["a\x00b"], None, "NUL"),
    "NUL in label": (["fine"], ["shirt\x00"], "NUL"),
    "external_id over 256 characters": (["x" * 257], None, "at most 256"),
    "label over 256 characters": (["fine"], ["y" * 257], "at most 256"),
}


@pytest.mark.parametrize("case", list(TEXT_CASES))
def test_text_postgresql_cannot_hold_is_refused_on_either_database(
    client: TestClient, gallery: list[str], admin_headers: dict, service_settings: Settings, case: str
) -> None:
    """One input rule on SQLite and PostgreSQL (the fixture runs both): 422, nothing written."""
    ids, labels, words = TEXT_CASES[case]
    before = snapshot(client, service_settings)
    r = upload(client, admin_headers, [synthetic_png(8)], ids, labels)
    assert r.status_code == 422, r.text
    assert words in r.json()["detail"]
    assert snapshot(client, service_settings) == before


def test_reads_and_deletes_by_an_id_no_database_can_hold_are_422(
    client: TestClient, gallery: list[str], admin_headers: dict, service_settings: Settings
) -> None:
    before = snapshot(client, service_settings)
    assert client.get("/gallery/a%00b").status_code == 422
    assert client.delete("/gallery/a%00b", headers=admin_headers).status_code == 422
    # a lone surrogate arrives through JSON escapes, which Python decodes to an unencodable str
    r = client.post(
        "/upgrade", content=b'{"model": "m\\ud800"}', headers={**admin_headers, "Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "unicode" in r.json()["detail"], r.text
    r = client.post("/models", data={"path": "a\x00.pt"}, headers=admin_headers)
    assert r.status_code == 422 and "NUL" in r.json()["detail"], r.text
    assert snapshot(client, service_settings) == before


@pytest.mark.parametrize(
    "params, files, status",
    [
        ({"k": 0}, True, 422),
        ({"k": 1001}, True, 422),
        ({"k": "ten"}, True, 422),
        ({"k": 5}, False, 422),
    ],
    ids=["k=0", "k=1001", "k not a number", "no image"],
)
def test_bad_searches(
    client: TestClient, gallery: list[str], service_settings: Settings, params: dict, files: bool, status: int
) -> None:
    before = snapshot(client, service_settings)
    kwargs = {"files": {"image": ("q.png", synthetic_png(1), "image/png")}} if files else {"data": {"x": "y"}}
    r = client.post("/search", params=params, **kwargs)
    assert r.status_code == status, r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]
    assert snapshot(client, service_settings) == before


@pytest.mark.parametrize("blob", [b"not an image", b"", b"\x89PNG\r\n\x1a\n\x00\x00"], ids=["text", "empty", "cut"])
def test_search_with_undecodable_image_is_422(client: TestClient, gallery: list[str], blob: bytes) -> None:
    r = client.post("/search", files={"image": ("q.png", blob, "image/png")})
    assert r.status_code == 422
    assert 'hotrefresh_search_requests_total{status="422"}' in client.get("/metrics").text


def test_a_pixel_flood_is_refused_with_413_before_decoding(client: TestClient, gallery: list[str]) -> None:
    import tracemalloc

    tracemalloc.start()
    r = client.post("/search", files={"image": ("q.png", pixel_flood_png(), "image/png")})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r.status_code == 413, r.text
    assert "13000x13000" in r.json()["detail"] and "HOTREFRESH_MAX_IMAGE_PIXELS" in r.json()["detail"]
    assert peak < 20 * 1024 * 1024  # the 169 MB canvas was never allocated


def test_search_k_above_gallery_size_returns_everything_once(client: TestClient, gallery: list[str]) -> None:
    r = client.post("/search", files={"image": ("q.png", synthetic_png(9, mode="L"), "image/png")}, params={"k": 1000})
    assert r.status_code == 200
    found = [h["external_id"] for h in r.json()["results"]]
    assert sorted(found) == sorted(gallery)


@pytest.fixture
def small_client(service_settings: Settings) -> Iterator[TestClient]:
    """The app with tight limits: 4 KiB per image, 3 images per request."""
    from service.api.app import create_app

    settings = service_settings.model_copy(update={"max_upload_bytes": 4096, "max_images_per_request": 3})
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


def test_oversized_uploads_are_refused_and_change_nothing(
    small_client: TestClient, checkpoints: dict, admin_headers: dict, service_settings: Settings, fmnist
) -> None:
    client = small_client
    register(client, admin_headers, "old.pt")
    big = synthetic_png(11, size=(128, 128))  # random RGB noise does not compress: ~49 KB
    assert len(big) > 4096
    small = png_bytes(fmnist[0][0])
    assert len(small) <= 4096
    before = snapshot(client, service_settings)

    r = upload(client, admin_headers, [small, big], ["s", "b"])
    assert r.status_code == 413 and "HOTREFRESH_MAX_UPLOAD_BYTES" in r.json()["detail"]
    r = upload(client, admin_headers, [small] * 4, ["a", "b", "c", "d"])
    assert r.status_code == 413 and "HOTREFRESH_MAX_IMAGES_PER_REQUEST" in r.json()["detail"]
    r = client.post("/search", files={"image": ("q.png", big, "image/png")})
    assert r.status_code == 413
    # A body larger than any valid request is refused from its Content-Length, unread.
    r = client.post("/search", files={"image": ("q.png", b"\0" * (2 << 20), "image/png")})
    assert r.status_code == 413 and "exceeds" in r.json()["detail"]
    assert snapshot(client, service_settings) == before

    assert upload(client, admin_headers, [small], ["s"]).status_code == 201


def test_insert_during_an_upgrade_keeps_both_vectors_and_delete_leaves_the_queue(
    client: TestClient,
    gallery: list[str],
    checkpoints: dict,
    admin_headers: dict,
    service_settings: Settings,
    redis_client,
) -> None:
    from service.queue import BackfillQueue

    register(client, admin_headers, "new.pt")
    url = service_settings.sqlalchemy_url
    with session_scope(url) as s:
        up = Upgrade(
            from_model="old",
            to_model="new",
            strategy="margin",
            state="running",
            batch_size=8,
            total=len(gallery),
            checkpoints=[],
        )
        s.add(up)
        catalog.set_serving_state(s, gallery_model="new", query_model="new")
        s.flush()
        upgrade_id = up.id
        ids = {i.external_id: i.id for i in s.scalars(select(GalleryItem))}
    queue = BackfillQueue(redis_client, service_settings, upgrade_id)
    queue.push(list(ids.values()), list(np.linspace(0, 1, len(ids))))

    r = upload(client, admin_headers, [synthetic_png(21)], ["during"])
    assert r.status_code == 201 and r.json()["items"][0]["model"] == "new"
    new_id = r.json()["items"][0]["id"]
    with session_scope(url) as s:
        models = sorted(s.scalars(select(Embedding.model).where(Embedding.item_id == new_id)))
    assert models == ["new", "old"]  # the old vector too, so a rollback re-encodes nothing

    assert client.delete(f"/gallery/{gallery[0]}", headers=admin_headers).status_code == 204
    assert queue.depth() == len(ids) - 1
    remaining = {int(x) for x in redis_client.zrange(keys.queue(service_settings, upgrade_id), 0, -1)}
    assert ids[gallery[0]] not in remaining


def test_exotic_colour_modes_are_converted_not_500(client: TestClient, gallery: list[str], admin_headers: dict) -> None:
    r = upload(client, admin_headers, [_lab_tiff()], ["lab"])
    assert r.status_code == 201, r.text
    r = client.post("/search", files={"image": ("q.tif", _lab_tiff(), "image/tiff")}, params={"k": 1})
    assert r.status_code == 200 and r.json()["results"][0]["external_id"] == "lab"


def test_every_write_through_the_api_reaches_the_index_log_and_leaves_nothing_staged(
    client: TestClient, service_settings: Settings, admin_headers: dict, gallery: list[str], r: redis_lib.Redis
) -> None:
    entries = indexlog.read_after(r, service_settings, "0-0")
    assert [(e.op, e.model, len(e.ids)) for e in entries] == [("switch", "old", 0), ("add", "old", 12)]
    assert client.delete(f"/gallery/{gallery[0]}", headers=admin_headers).status_code == 204
    last = indexlog.read_after(r, service_settings, entries[-1].id)
    assert [(e.op, e.model, len(e.ids)) for e in last] == [("delete", "old", 1)]
    with session_scope(service_settings.sqlalchemy_url) as s:
        assert s.scalar(select(func.count()).select_from(IndexLogOutbox)) == 0
