"""Raw gallery images, kept because re-encoding with a new model needs them.

Content-addressed: the key is the sha256 of the bytes, so a key names exactly one content,
identical uploads share one file, and a key is a 64-character lowercase hex string and
nothing else. That strict shape is what makes it impossible for a key to name a path outside
the root (no separators, no ``..``, no absolute paths) — checked on every access, not trusted.

:class:`ImageStore` is the interface; :class:`LocalImageStore` keeps files on disk. An object
store (S3, GCS) implements the same three methods with the key as the object name.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path

_KEY = re.compile(r"[0-9a-f]{64}")


class InvalidImageKey(ValueError):
    pass


class ImageNotFound(KeyError):
    pass


def content_key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate_key(key: str) -> str:
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise InvalidImageKey(f"not an image key (64 lowercase hex characters): {key!r}")
    return key


class ImageStore(ABC):
    @abstractmethod
    def put(self, data: bytes) -> str:
        """Store ``data``; returns its key. Idempotent."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The bytes stored under ``key``; :class:`ImageNotFound` if none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...


class LocalImageStore(ImageStore):
    """Files at ``root/ab/cd/<key>`` (two fan-out levels keep directories small)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._root = str(self.root)
        self._plain: set[str] = set()  # fan-out directories seen to be real directories (at most 65,792)

    def path_for(self, key: str) -> Path:
        validate_key(key)
        path = (self.root / key[:2] / key[2:4] / key).resolve()
        # Belt and braces: the key's shape already rules this out, but a symlinked fan-out
        # directory must not lead outside the root either.
        if not path.is_relative_to(self.root):
            raise InvalidImageKey(f"image key {key!r} resolves outside the image store")
        return path

    def put(self, data: bytes) -> str:
        key = content_key(data)
        fanout = f"{self._root}/{key[:2]}/{key[2:4]}"
        if fanout not in self._plain:  # first write below this directory in this process
            path = self.path_for(key)  # resolves: a symlinked fan-out leading out is refused here
            path.parent.mkdir(parents=True, exist_ok=True)
            if not self._is_plain(fanout):  # symlinked but inside the root: the resolved path
                return key if path.exists() else self._write(path.parent, path, data, key)
        path_s = f"{fanout}/{key}"
        if os.path.lexists(path_s):
            return key
        return self._write(Path(fanout), Path(path_s), data, key)

    @staticmethod
    def _write(directory: Path, path: Path, data: bytes, key: str) -> str:
        # Write to a temporary file in the same directory, then rename: a reader never sees
        # a half-written image, and two writers of the same content both end up correct.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return key

    def get(self, key: str) -> bytes:
        validate_key(key)
        # Fast path (the backfill reads every image; ``Path.resolve`` is most of a read's cost):
        # the key's shape keeps the path beneath the (resolved) root unless a component is a
        # symlink, so check that neither fan-out directory is one (by lstat, once per directory
        # and process: there are at most 65,536 of them) and open the file with O_NOFOLLOW.
        # Anything symlinked takes the resolving path, which refuses what leads out.
        fanout = f"{self._root}/{key[:2]}/{key[2:4]}"
        try:
            if fanout in self._plain or self._is_plain(fanout):
                return _read_all(os.open(f"{fanout}/{key}", os.O_RDONLY | os.O_NOFOLLOW))
        except FileNotFoundError:
            raise ImageNotFound(key) from None
        except OSError as exc:
            if exc.errno != errno.ELOOP:  # ELOOP: the file itself is a symlink
                raise
        try:
            return self.path_for(key).read_bytes()
        except FileNotFoundError:
            raise ImageNotFound(key) from None

    def _is_plain(self, fanout: str) -> bool:
        """Whether neither of ``fanout``'s two levels is a symlink; each level remembered once it
        was seen to be a real directory. (One swapped for a symlink later is not seen: doing that
        takes write access to the store, which could as well replace the images themselves.)"""
        for level in (fanout[:-3], fanout):
            if level not in self._plain:
                if stat.S_ISLNK(os.lstat(level).st_mode):
                    return False
                self._plain.add(level)
        return True

    def exists(self, key: str) -> bool:
        return self.path_for(key).is_file()


_READ_CHUNK = 1 << 16


def _read_all(fd: int) -> bytes:
    """The whole file behind ``fd``, which is closed. Plain ``os.read`` calls rather than a file
    object: ``fdopen(...).read()`` adds an ``fstat``, a read to find the end and a buffered
    object per image, a third of a small image's read time (the backfill reads every image)."""
    try:
        chunks = [os.read(fd, _READ_CHUNK)]
        while chunks[-1]:  # a short read is not the end: only an empty one is
            chunks.append(os.read(fd, _READ_CHUNK))
    finally:
        os.close(fd)
    return b"".join(chunks)


def image_store_for(settings) -> ImageStore:  # noqa: ANN001 - service.settings.Settings
    return LocalImageStore(settings.images_path)
