"""Raw gallery images, kept because re-encoding with a new model needs them.

Content-addressed: the key is the sha256 of the bytes, so a key names exactly one content,
identical uploads share one file, and a key is a 64-character lowercase hex string and
nothing else. That strict shape is what makes it impossible for a key to name a path outside
the root (no separators, no ``..``, no absolute paths) — checked on every access, not trusted.

:class:`ImageStore` is the interface; :class:`LocalImageStore` keeps files on disk,
:class:`S3ImageStore` objects in an S3-compatible bucket (AWS, SeaweedFS, MinIO, ...) with the key
as the object name under a prefix. ``HOTREFRESH_IMAGE_STORE`` picks one (:func:`image_store_for`).

Two kinds of failure, kept apart: an image that is missing or unreadable is that item's fault
(:class:`ImageNotFound`, a decode error: the backfill counts an attempt for it), while a store
that cannot be reached (refused connections, timeouts, 5xx answers) is an outage,
:class:`~service.errors.DependencyDown` naming "object store": the worker's batch is not landed
and is redone once the store is back, and an upload is answered 503.

The S3 client is obstore (the Python binding of Rust's ``object_store``, maintained by
Development Seed, used by Apache Arrow and its ecosystem), chosen over boto3 by measurement
(``benchmarks/image_store_s3.py`` on SeaweedFS, results/image_store_s3.json, 2 cores): a GET of a
~330-byte PNG 0.73 ms against boto3's 2.0 ms, a batch of 64 fetched at once 18 ms against 112
ms (50 KB JPEGs: 27 ms against 91 ms), PUTs 870/s against 410/s, imported in 0.04 s against 0.12
s with 12 MB less resident. Its blocking calls release the GIL, so a batch is fetched by a
thread pool (in the benchmark a little faster than its asyncio API under ``gather``, and usable
from any thread without an event loop).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from service.errors import DependencyDown
from service.settings import image_store_location

OBJECT_STORE = "object store"  # the dependency a DependencyDown from S3ImageStore names

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

    def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        """Store each of ``blobs``; their keys in order. All or an error (a key already
        written stays: puts are idempotent, and an image no row names is harmless). This
        default writes one after another; a remote store writes them concurrently."""
        return [self.put(data) for data in blobs]

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | Exception]:
        """The bytes of each of ``keys``, or the error reading it raised (:class:`ImageNotFound`,
        :class:`InvalidImageKey`, ...): one bad image does not sink the others. A store that
        cannot be reached raises :class:`~service.errors.DependencyDown` for the whole call.
        This default reads one after another; a remote store reads them concurrently."""
        out: dict[str, bytes | Exception] = {}
        for key in keys:
            if key not in out:
                try:
                    out[key] = self.get(key)
                except DependencyDown:
                    raise
                except Exception as exc:  # noqa: BLE001 - this key's error, returned for it
                    out[key] = exc
        return out


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


class S3ImageStore(ImageStore):
    """Objects ``<prefix>/<key>`` in ``bucket`` of an S3-compatible store (``endpoint_url``:
    SeaweedFS, MinIO, ...; unset: AWS). Credentials from the standard AWS environment
    (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, web identity, the
    instance metadata service), as obstore's ``S3Store`` reads them.

    A request is retried twice on a connection error or a 5xx (obstore's retry, backing off from
    100 ms), and gives up after ``timeout_s``; what still fails is :class:`DependencyDown`.
    ``get_many`` runs up to ``concurrency`` GETs at once on a thread pool of this process."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str = "",
        region: str = "",
        timeout_s: float = 10.0,
        concurrency: int = 32,
    ) -> None:
        try:
            from obstore.store import S3Store
        except ImportError as exc:
            raise RuntimeError("an s3:// image store needs obstore: pip install 'hotrefresh[s3]'") from exc

        self.bucket, self.prefix, self.concurrency = bucket, prefix.strip("/"), concurrency
        config: dict[str, Any] = {}
        if endpoint_url:
            config["endpoint"] = endpoint_url
        if region:
            config["region"] = region
        timeout = timedelta(seconds=timeout_s)
        self._store = S3Store(
            bucket,
            prefix=self.prefix or None,
            config=config,  # type: ignore[arg-type] # a TypedDict built key by key
            client_options={
                "allow_http": endpoint_url.startswith("http://"),
                "timeout": timeout,
                "connect_timeout": min(timeout, timedelta(seconds=5)),
            },
            retry_config={
                "max_retries": 2,
                "retry_timeout": timeout,
                "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=1)},
            },
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3ImageStore(s3://{self.bucket}/{self.prefix})"

    def put(self, data: bytes) -> str:
        import obstore

        key = content_key(data)
        try:  # same key, same bytes: writing it again is harmless, and cheaper than asking first
            obstore.put(self._store, key, data)
        except Exception as exc:
            raise _failure(exc, key) from exc
        return key

    def get(self, key: str) -> bytes:
        import obstore

        validate_key(key)
        try:
            return bytes(obstore.get(self._store, key).bytes())
        except Exception as exc:
            raise _failure(exc, key) from exc

    def exists(self, key: str) -> bool:
        import obstore

        validate_key(key)
        try:
            obstore.head(self._store, key)
        except Exception as exc:
            err = _failure(exc, key)
            if isinstance(err, ImageNotFound):
                return False
            raise err from exc
        return True

    def _get_or_error(self, key: str) -> bytes | Exception:
        try:
            return self.get(key)
        except Exception as exc:  # noqa: BLE001 - returned to get_many, which sorts it
            return exc

    def put_many(self, blobs: Sequence[bytes]) -> list[str]:
        # one PUT after another is one round trip per image: the bulk ingest ran at 91 items/s
        if len(blobs) <= 1:
            return super().put_many(blobs)
        return list(self._executor().map(self.put, blobs))

    def get_many(self, keys: Sequence[str]) -> dict[str, bytes | Exception]:
        unique = list(dict.fromkeys(keys))
        if len(unique) <= 1:
            return super().get_many(unique)
        pool = self._executor()
        results = dict(zip(unique, pool.map(self._get_or_error, unique), strict=True))
        for value in results.values():
            if isinstance(value, DependencyDown):
                raise value
        return results

    def _executor(self) -> ThreadPoolExecutor:
        """This process's pool (a pool made before a fork has no threads in the child)."""
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="imagestore")
                self._pool_pid = os.getpid()
            return self._pool


def _failure(exc: Exception, key: str) -> Exception:
    """An obstore error as this module's: a missing object is :class:`ImageNotFound` (the item's
    fault), anything else the store answered or failed to answer is :class:`DependencyDown`."""
    from obstore.exceptions import NotFoundError

    if isinstance(exc, NotFoundError | FileNotFoundError):  # obstore 0.12 raises the builtin one
        return ImageNotFound(key)
    if isinstance(exc, ImageNotFound | InvalidImageKey | DependencyDown):
        return exc
    return DependencyDown(OBJECT_STORE, exc)


def image_store_for(settings) -> ImageStore:  # noqa: ANN001 - service.settings.Settings
    """The store ``settings.image_store`` names (unset or ``file://``: files on disk)."""
    scheme, location, prefix = image_store_location(settings.image_store)
    if scheme == "s3":
        return S3ImageStore(
            location,
            prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            timeout_s=settings.s3_timeout_s,
            concurrency=settings.image_fetch_concurrency,
        )
    return LocalImageStore(settings.images_path)
