"""The content-addressed image store: round trips, deduplication, and keys that cannot escape."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.imagestore import ImageNotFound, InvalidImageKey, LocalImageStore, content_key


def test_put_get_round_trip_and_dedup(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path / "images")
    key = store.put(b"hello image")
    assert key == content_key(b"hello image")
    assert store.put(b"hello image") == key
    assert store.get(key) == b"hello image"
    assert store.exists(key)
    files = [p for p in (tmp_path / "images").rglob("*") if p.is_file()]
    assert len(files) == 1 and not files[0].name.startswith(".tmp")


def test_missing_key_is_not_found(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path)
    with pytest.raises(ImageNotFound):
        store.get("0" * 64)


@pytest.mark.parametrize(
    "key",
    [
        "../../etc/passwd",
        "/etc/passwd",
        "a" * 63,
        "A" * 64,
        "g" * 64,
        "ab/" + "c" * 61,
        "." * 64,
        "",
        "a" * 65,
    ],
)
def test_keys_that_are_not_sha256_hex_are_refused(tmp_path: Path, key: str) -> None:
    store = LocalImageStore(tmp_path / "root")
    with pytest.raises(InvalidImageKey):
        store.path_for(key)
    with pytest.raises(InvalidImageKey):
        store.get(key)


def test_symlinked_fanout_cannot_lead_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    outside.mkdir()
    root.mkdir()
    key = content_key(b"x")
    os.symlink(outside, root / key[:2])
    store = LocalImageStore(root)
    with pytest.raises(InvalidImageKey):
        store.put(b"x")
    assert not any(outside.rglob("*"))


def test_get_through_a_symlinked_fanout_leading_outside_is_refused(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    key = content_key(b"secret")
    (outside / key[2:4]).mkdir(parents=True)
    (outside / key[2:4] / key).write_bytes(b"secret")
    os.symlink(outside, root / key[:2])
    with pytest.raises(InvalidImageKey):
        LocalImageStore(root).get(key)


def test_get_of_a_symlinked_file_leading_outside_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = LocalImageStore(root)
    key = content_key(b"secret")
    (tmp_path / "secret").write_bytes(b"secret")
    store.path_for(key).parent.mkdir(parents=True)
    os.symlink(tmp_path / "secret", store.path_for(key))
    with pytest.raises(InvalidImageKey):
        store.get(key)


def test_get_of_a_symlink_inside_the_root_still_reads(tmp_path: Path) -> None:
    store = LocalImageStore(tmp_path / "root")
    real = store.put(b"abc")
    key = content_key(b"alias")
    store.path_for(key).parent.mkdir(parents=True, exist_ok=True)
    os.symlink(store.path_for(real), store.path_for(key))
    assert store.get(key) == b"abc"


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 3 * 65536 + 17])
def test_get_returns_every_byte_whatever_the_size(tmp_path: Path, size: int) -> None:
    """Reads go by fixed-size chunks: files of zero bytes, one chunk exactly, and several chunks
    with a remainder all come back whole."""
    store = LocalImageStore(tmp_path)
    data = os.urandom(size)
    assert store.get(store.put(data)) == data
