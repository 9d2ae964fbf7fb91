"""The S3 image store against a real S3 server (SeaweedFS, ``weed server -s3``): the same contract
as the local store (round trip, idempotent put, ImageNotFound, keys refused), a batch read
concurrently with its failures per key, and an unreachable store as an outage
(:class:`DependencyDown` naming the object store), not as a missing image."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from service.errors import DependencyDown
from service.imagestore import (
    ImageNotFound,
    InvalidImageKey,
    LocalImageStore,
    S3ImageStore,
    content_key,
    image_store_for,
)
from service.settings import Settings
from tests.utils.gallery import png
from tests.utils.servers import OwnSeaweed

pytestmark = pytest.mark.integration


@pytest.fixture
def store(seaweed_server: OwnSeaweed, monkeypatch: pytest.MonkeyPatch) -> Iterator[S3ImageStore]:
    for k, v in seaweed_server.env().items():
        if k.startswith("AWS_"):
            monkeypatch.setenv(k, v)
    yield S3ImageStore(
        seaweed_server.bucket,
        f"t-{uuid.uuid4().hex[:10]}/images",
        endpoint_url=seaweed_server.endpoint,
        region=seaweed_server.region,
        timeout_s=5,
        concurrency=8,
    )


def _objects(server: OwnSeaweed, prefix: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=server.bucket, Prefix=prefix + "/")
    return [o["Key"] for o in listed.get("Contents", [])]


def test_round_trip_with_the_key_as_the_object_name(store: S3ImageStore, seaweed_server: OwnSeaweed) -> None:
    data = np.random.default_rng(1).integers(0, 256, 70_000, dtype=np.uint8).tobytes()
    key = store.put(data)
    assert key == content_key(data)
    assert store.get(key) == data
    assert store.exists(key)
    assert _objects(seaweed_server, store.prefix) == [f"{store.prefix}/{key}"]
    body = seaweed_server.client().get_object(Bucket=seaweed_server.bucket, Key=f"{store.prefix}/{key}")["Body"]
    assert body.read() == data


def test_put_is_idempotent(store: S3ImageStore, seaweed_server: OwnSeaweed) -> None:
    key = store.put(b"same image")
    assert store.put(b"same image") == key
    assert store.get(key) == b"same image"
    assert _objects(seaweed_server, store.prefix) == [f"{store.prefix}/{key}"]


def test_put_many_stores_every_blob_and_keys_them_in_order(store: S3ImageStore, seaweed_server: OwnSeaweed) -> None:
    rng = np.random.default_rng(2)
    blobs = [rng.integers(0, 256, 1000 + k, dtype=np.uint8).tobytes() for k in range(40)] + [b"dup", b"dup"]
    keys = store.put_many(blobs)
    assert keys == [content_key(b) for b in blobs]
    assert sorted(_objects(seaweed_server, store.prefix)) == sorted({f"{store.prefix}/{k}" for k in keys})
    assert all(store.get(k) == b for k, b in zip(keys, blobs, strict=True))


def test_missing_key_is_not_found(store: S3ImageStore) -> None:
    with pytest.raises(ImageNotFound):
        store.get("0" * 64)
    assert not store.exists("0" * 64)


@pytest.mark.parametrize("key", ["../../etc/passwd", "a" * 63, "A" * 64, "ab/" + "c" * 61, ""])
def test_keys_that_are_not_sha256_hex_are_refused(store: S3ImageStore, key: str) -> None:
    with pytest.raises(InvalidImageKey):
        store.get(key)
    with pytest.raises(InvalidImageKey):
        store.exists(key)
    assert isinstance(store.get_many([key, "1" * 64])[key], InvalidImageKey)


def test_get_many_reads_concurrently_and_reports_a_missing_key(
    store: S3ImageStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = [f"image {i}".encode() for i in range(20)]
    keys = [store.put(b) for b in blobs]
    missing = "f" * 64
    # Every GET waits until 4 are in flight at once: a sequential get_many would never get past
    # the first (the barrier breaks after its timeout and the test fails).
    barrier = threading.Barrier(4, timeout=20)
    threads: set[int] = set()
    real_get = store.get

    def get(key: str) -> bytes:
        threads.add(threading.get_ident())
        if len(threads) <= 4:
            barrier.wait()
        return real_get(key)

    monkeypatch.setattr(store, "get", get)
    got = store.get_many([*keys[:10], missing, *keys[10:], keys[0]])
    assert set(got) == {*keys, missing}
    assert all(got[k] == b for k, b in zip(keys, blobs, strict=True))
    assert isinstance(got[missing], ImageNotFound)
    assert len(threads) >= 4


_META = SimpleNamespace(input_channels=1, input_size=(28, 28), mean=0.0, std=1.0, resize="center_crop", crop_ratio=1.0)


def test_a_batch_loads_from_s3_with_missing_and_corrupt_images_failing_per_item(store: S3ImageStore) -> None:
    from service.upgrade.images import load_pixels

    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(3)]
    keys = [store.put(png(a)) for a in images]
    corrupt = store.put(b"\x89PNG\r\n\x1a\n not really")
    missing = "e" * 64
    pixels, ok, errors = load_pixels(store, [keys[0], missing, keys[1], corrupt, keys[2]], _META)
    assert ok == [0, 2, 4] and set(errors) == {1, 3}
    assert errors[1].startswith("ImageNotFound")
    assert np.array_equal(pixels[:, 0], np.stack(images))


def test_an_unreachable_store_is_an_outage_not_an_items_fault(store: S3ImageStore, seaweed_server: OwnSeaweed) -> None:
    """Nothing listening where the store should be (a stopped server: the object-store outage test
    in tests/e2e stops and restarts a real one mid-upgrade)."""
    from cli.launcher import free_port
    from service.upgrade.images import load_pixels

    key = store.put(b"kept across the outage")
    away = S3ImageStore(
        seaweed_server.bucket,
        store.prefix,
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        region=seaweed_server.region,
        timeout_s=2,
        concurrency=4,
    )
    for call in (lambda: away.get(key), lambda: away.put(b"new"), lambda: away.exists(key)):
        with pytest.raises(DependencyDown) as err:
            call()
        assert err.value.dependency == "object store" and err.value.status == 503
        assert "object store unavailable" in str(err.value)
    with pytest.raises(DependencyDown):  # not a dict of ImageNotFound: no item's fault
        away.get_many([key, content_key(b"other")])
    with pytest.raises(DependencyDown):  # a worker's batch: no item charged an attempt
        load_pixels(away, [key, content_key(b"other")], _META)
    assert store.get_many([key])[key] == b"kept across the outage"


def test_the_settings_pick_the_store(seaweed_server: OwnSeaweed, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = image_store_for(Settings(data_dir=tmp_path))
    assert isinstance(local, LocalImageStore) and local.root == (tmp_path / "images").resolve()
    by_url = image_store_for(Settings(data_dir=tmp_path, image_store=f"file://{tmp_path}/elsewhere"))
    assert isinstance(by_url, LocalImageStore) and by_url.root == (tmp_path / "elsewhere").resolve()
    s3 = image_store_for(
        Settings(image_store="s3://hotrefresh/a/b/", s3_endpoint_url=seaweed_server.endpoint, image_fetch_concurrency=5)
    )
    assert isinstance(s3, S3ImageStore) and (s3.bucket, s3.prefix, s3.concurrency) == ("hotrefresh", "a/b", 5)


@pytest.mark.parametrize(
    "url",
    [
        "s3://",
        "s3:///prefix",
        "s3://Bad_Bucket/x",
        "s3://bucket/../x",
        "gs://bucket/x",
        "file://host/x",
        "file:rel/x",
        "/plain/path",
        "s3://bucket/x?versionId=1",
    ],
)
def test_a_bad_image_store_url_is_refused_at_start_up(url: str) -> None:
    with pytest.raises(ValueError, match="HOTREFRESH_IMAGE_STORE"):
        Settings(image_store=url)
