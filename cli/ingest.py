"""``hotrefresh ingest``: upload a labeled folder or Fashion-MNIST to a running API in batched
multipart requests, with a progress bar."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.client import ApiOpt, TokenOpt, client, refused, require_token, resolve_client, unreachable

if TYPE_CHECKING:
    import numpy as np


def _batches(items: Iterator[tuple[str, str, bytes]], size: int) -> Iterator[list[tuple[str, str, bytes]]]:
    batch: list[tuple[str, str, bytes]] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _folder_items(root: Path) -> list[tuple[str, str, Path]]:
    from models.data import IMAGE_SUFFIXES

    if not root.is_dir():
        raise typer.BadParameter(f"{root} is not a directory")
    out = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(cls.iterdir()):
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                out.append((f"{cls.name}/{f.name}", cls.name, f))
    if not out:
        raise typer.BadParameter(f"{root} holds no images in class sub-folders (root/<class>/<image>)")
    return out


COLOUR_SIZE = 64


def _colour_jpegs(images: np.ndarray, indices: range, chunk: int = 512, base: int = 0) -> Iterator[bytes]:
    """Colour JPEGs of ``images[i - base]`` for i in ``indices``, a chunk at a time (seeded per chunk start)."""
    import io

    from PIL import Image

    from models.data import colourize

    for start in range(indices.start, indices.stop, chunk):
        block = colourize(images[start - base : min(indices.stop, start + chunk) - base], COLOUR_SIZE, seed=start)
        for a in block:
            buf = io.BytesIO()
            Image.fromarray(a.transpose(1, 2, 0)).save(buf, format="JPEG", quality=90)
            yield buf.getvalue()


def _fashion_items(
    images: np.ndarray, labels: np.ndarray, split: str, indices: range, colour: bool, chunk: int = 4096
) -> Iterator[tuple[str, str, bytes]]:
    """(external id, label, bytes) of positions ``indices`` of the images repeated as copies."""
    from models.data import FASHION_MNIST_CLASSES, augmented_copy, encode_png

    n = len(images)
    for start in range(indices.start, indices.stop, chunk):
        stop = min(indices.stop, start + chunk)
        for copy in range(start // n, (stop - 1) // n + 1):  # a chunk may straddle two copies
            lo, hi = max(start, copy * n) - copy * n, min(stop, (copy + 1) * n) - copy * n
            block = augmented_copy(images[lo:hi], copy, seed=lo) if copy else images[lo:hi]
            blobs = _colour_jpegs(block, range(lo, hi), base=lo) if colour else map(encode_png, block)
            suffix = f"-c{copy}" if copy else ""
            for i, data in zip(range(lo, hi), blobs, strict=True):
                yield f"fmnist-{split}-{i:05d}{suffix}", FASHION_MNIST_CLASSES[int(labels[i])], data


def _bulk(items: Iterator[tuple[str, str, bytes]], total: int, batch_size: int) -> None:
    """Batches through ``service.gallery.add_batch`` in this process (migrating the database first)."""
    from tqdm import tqdm

    from service.db.migrate import upgrade_head
    from service.errors import ServiceError
    from service.gallery import Upload, add_batch
    from service.settings import get_settings
    from workers.context import WorkerContext

    settings = get_settings()
    upgrade_head(settings.sqlalchemy_url)
    ctx = WorkerContext.from_settings(settings)  # one Redis client, the image store, batch-ready encoders
    done = 0
    with tqdm(total=total, unit="img", desc="ingest (bulk)") as bar:
        for batch in _batches(items, batch_size):
            try:
                add_batch(settings, ctx.redis, ctx.images, ctx.encoders, [Upload(e, lab, d) for e, lab, d in batch])
            except ServiceError as e:
                bar.close()
                typer.echo(f"error: batch at item {done}: {e.status} {e}", err=True)
                raise typer.Exit(1) from None
            done += len(batch)
            bar.update(len(batch))
    typer.echo(f"ingested {done} images into {settings.sqlalchemy_url.split('@')[-1]}")
    ctx.redis.close()


def ingest(
    folder: Annotated[Path | None, typer.Argument(help="A labeled folder: root/<class>/<image>.")] = None,
    fashion_mnist: Annotated[bool, typer.Option("--fashion-mnist", help="Ingest Fashion-MNIST.")] = False,
    colour: Annotated[
        bool,
        typer.Option("--colour", help="With --fashion-mnist: as colour photos (models.data.colourize), 64 x 64 JPEGs."),
    ] = False,
    copies: Annotated[
        int,
        typer.Option(
            min=1,
            help="With --fashion-mnist: each image this many times, copies after the first a seeded "
            "shift, flip and brightness change (ids ...-c<k>): a gallery far larger than the data set",
        ),
    ] = 1,
    bulk: Annotated[
        bool,
        typer.Option(
            "--bulk",
            help="Write straight to the database and image store of this machine's configuration "
            "(HOTREFRESH_DATABASE_URL, HOTREFRESH_DATA_DIR, ...), not through an API: the same validation, "
            "encoding and index log as POST /gallery, without HTTP; for millions of images",
        ),
    ] = False,
    split: Annotated[str, typer.Option(help="Fashion-MNIST split: train or test.")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="At most this many images.")] = None,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many images first.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per POST /gallery request.")] = 128,
    api: ApiOpt = None,
    token: TokenOpt = None,
    url: Annotated[str | None, typer.Option("--url", hidden=True, help="Deprecated: --api.")] = None,
) -> None:
    """Upload a gallery to a running API in batched multipart requests, with a progress bar."""
    import httpx
    from tqdm import tqdm

    if (folder is None) == (not fashion_mnist):
        raise typer.BadParameter("give either a FOLDER or --fashion-mnist")
    if (colour or copies > 1) and not fashion_mnist:
        raise typer.BadParameter("--colour and --copies go with --fashion-mnist")
    if url is not None:
        typer.echo("--url is deprecated; use --api", err=True)
        api = api or url
    if not bulk:
        api, token = resolve_client(api, token)
        token = require_token(token)

    if fashion_mnist:
        from models.data import load_fashion_mnist

        images, labels = load_fashion_mnist(split)
        n = len(images) * copies
        stop = n if limit is None else min(n, offset + limit)
        indices = range(offset, stop)
        total = len(indices)
        items: Iterator[tuple[str, str, bytes]] = _fashion_items(images, labels, split, indices, colour)
    else:
        assert folder is not None
        files = _folder_items(folder)[offset:]
        files = files[:limit] if limit is not None else files
        total = len(files)
        items = ((ext, label, path.read_bytes()) for ext, label, path in files)

    if bulk:
        _bulk(items, total, batch_size)
        return
    assert api is not None  # resolved above when not bulk
    done = 0
    with client(api, token, timeout=300) as http, tqdm(total=total, unit="img", desc="ingest") as bar:
        for batch in _batches(items, batch_size):
            files_part = [
                ("image", (f"{ext.replace('/', '_')}.img", data, "application/octet-stream"))
                for ext, _label, data in batch
            ]
            form = {"external_id": [ext for ext, _, _ in batch], "label": [lab for _, lab, _ in batch]}
            try:
                r = http.post("/gallery", files=files_part, data=form)
            except httpx.HTTPError as exc:
                bar.close()
                typer.echo(f"stopped after {done} images", err=True)
                unreachable(api, exc)
            if r.status_code != 201:
                bar.close()
                typer.echo(f"stopped after {done} images", err=True)
                refused(r)
            done += len(batch)
            bar.update(len(batch))
    typer.echo(f"ingested {done} images into {api}")
