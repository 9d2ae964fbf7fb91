"""A gallery of real Fashion-MNIST images, encoded by a real (tiny) old model, written straight
to SQL and the image store; and a small trained old/new model pair, cached between sessions."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import select

from models.data import encode_png as png
from service.db.migrate import upgrade_head
from service.db.schema import GalleryItem
from service.db.session import session_scope
from service.imagestore import image_store_for
from service.registry import EncoderCache, register
from service.repositories import items as item_repo
from service.settings import Settings

__all__ = ["Gallery", "build_gallery", "cached_tiny_pair", "delete_images", "png"]


def cached_tiny_pair(n_train: int = 2000, epochs: int = 1) -> tuple[Path, Path]:
    """``tests.utils.checkpoints.train_tiny_pair``, trained once and kept in a cache keyed by the training
    code's content (so a change to the models retrains, and test sessions don't repeat it)."""
    import hashlib
    import os
    import tempfile

    import models
    from tests.utils import checkpoints
    from tests.utils.checkpoints import train_tiny_pair

    code = hashlib.sha256()
    for name in ("checkpoint.py", "encoders.py", "losses.py", "train.py", "preprocess.py"):
        code.update((Path(models.__file__).parent / name).read_bytes())
    code.update(Path(checkpoints.__file__).read_bytes())
    root = Path(os.environ.get("HOTREFRESH_TEST_CACHE", Path(tempfile.gettempdir()) / "hotrefresh-test-cache"))
    directory = root / f"pair-{n_train}-{epochs}-{code.hexdigest()[:16]}"
    old, new = directory / "tiny-old.pt", directory / "tiny-new-ract.pt"
    if not (old.is_file() and new.is_file()):
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=root))
        train_tiny_pair(staging, n_train=n_train, epochs=epochs)
        try:
            staging.rename(directory)  # atomic: a half-trained pair is never seen
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another session finished first
    return old, new


@dataclass
class Gallery:
    settings: Settings
    ids: list[int]
    external_ids: list[str]
    old: str
    new: str


def build_gallery(
    settings: Settings,
    images: np.ndarray,
    labels: np.ndarray | None,
    old_path: Path,
    new_path: Path,
    corrupt: int = 0,
) -> Gallery:
    """Register both checkpoints and insert the images encoded with the old model, directly in
    SQL and the image store (what POST /gallery does, without an API process). The first
    ``corrupt`` items get bytes that are not an image in the store."""
    upgrade_head(settings.sqlalchemy_url)
    settings.models_path.mkdir(parents=True, exist_ok=True)
    cache = EncoderCache("cpu")
    store = image_store_for(settings)
    with session_scope(settings.sqlalchemy_url) as s:
        old_row, _ = register(s, settings, cache, old_path, uploaded=False)
        new_row, _ = register(s, settings, cache, new_path, uploaded=False)
        old_model = cache.get(s, old_row.name)
        pil = [Image.fromarray(a) for a in images]
        vecs = old_model.embed_images(pil)
        new_items = []
        for k, (a, lab) in enumerate(zip(images, labels if labels is not None else [None] * len(images), strict=True)):
            key = store.put(b"not an image %d" % k if k < corrupt else png(a))
            label = None if labels is None else str(int(lab))
            new_items.append(item_repo.NewItem(f"img-{k}", label, key, {old_row.name: vecs[k]}))
        rows = item_repo.add_items(s, new_items, old_row.name)
        ids, ext = [r.id for r in rows], [r.external_id for r in rows]
        return Gallery(settings, ids, ext, old_row.name, new_row.name)


def delete_images(settings: Settings, external_ids: list[str]) -> list[str]:
    """Remove the stored images of these gallery items from the local image store (an operator's
    lost files); returns their keys. Refuses keys shared with an item that keeps its image."""
    from service.imagestore import LocalImageStore

    with session_scope(settings.sqlalchemy_url) as s:
        keys = {item_repo.get_item(s, e).image_key for e in external_ids}
        kept = s.scalars(select(GalleryItem.image_key).where(GalleryItem.external_id.not_in(external_ids))).all()
    assert not keys & set(kept), "an image shared with an item that keeps it"
    store = LocalImageStore(settings.images_path)
    for key in keys:
        store.path_for(key).unlink()
    return sorted(keys)
