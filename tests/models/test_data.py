from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.data import allocate, eval_split, holdout_split, load_fashion_mnist, load_image_folder

LABELS = np.repeat(np.arange(10), 100)


def test_fashion_mnist_from_debian_files() -> None:
    x, y = load_fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("test", root="/nonexistent")


def test_expansion_allocation() -> None:
    a = allocate("expansion", LABELS, seed=0)
    assert len(a.old_idx) == 300 and len(a.new_idx) == 1000
    assert set(a.old_idx) <= set(a.new_idx)
    assert np.array_equal(a.old_idx, allocate("expansion", LABELS, seed=0).old_idx)
    assert not np.array_equal(a.old_idx, allocate("expansion", LABELS, seed=1).old_idx)


def test_open_data_allocation_is_per_class_and_disjoint() -> None:
    a = allocate("open-data", LABELS, seed=0)
    assert not set(a.old_idx) & set(a.new_idx)
    assert len(a.old_idx) + len(a.new_idx) == 1000
    assert np.all(np.bincount(LABELS[a.old_idx]) == 30)
    assert np.all(np.bincount(LABELS[a.new_idx]) == 70)


def test_open_class_allocation_splits_classes() -> None:
    a = allocate("open-class", LABELS, seed=0)
    old_c, new_c = set(LABELS[a.old_idx]), set(LABELS[a.new_idx])
    assert len(old_c) == 3 and len(new_c) == 7 and not old_c & new_c
    assert set(a.old_classes) == old_c
    with pytest.raises(ValueError, match="unknown allocation"):
        allocate("sideways", LABELS, seed=0)


def test_eval_split_is_disjoint_stratified_and_seeded() -> None:
    q, g = eval_split(LABELS, n_queries=200, n_gallery=700, seed=0)
    assert len(q) == 200 and len(g) == 700 and not set(q) & set(g)
    assert np.all(np.bincount(LABELS[q], minlength=10) == 20)
    q2, _ = eval_split(LABELS, n_queries=200, n_gallery=700, seed=0)
    assert np.array_equal(q, q2)
    with pytest.raises(ValueError):
        eval_split(LABELS, n_queries=600, n_gallery=600)
    tr, va = holdout_split(np.arange(100), 0.2, seed=0)
    assert len(va) == 20 and not set(tr) & set(va) and len(tr) + len(va) == 100


def test_image_folder_loader(tmp_path: Path) -> None:
    for cls, color in (("cats", 40), ("dogs", 200)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            Image.new("RGB", (40 + i, 30), (color, color, color)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    x, y, classes = load_image_folder(tmp_path)
    assert classes == ["cats", "dogs"] and x.shape == (6, 28, 28) and list(y) == [0, 0, 0, 1, 1, 1]
    assert abs(int(x[0].mean()) - 40) <= 1 and abs(int(x[5].mean()) - 200) <= 1
    x3, _, _ = load_image_folder(tmp_path, channels=3, size=(16, 16))
    assert x3.shape == (6, 3, 16, 16)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        load_image_folder(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_image_folder(tmp_path / "missing")


def test_digits_are_the_second_data_set_with_a_fixed_disjoint_split() -> None:
    pytest.importorskip("sklearn")
    from models.data import load_dataset, load_digits

    x, y = load_digits("train")
    xt, yt = load_digits("test")
    assert x.shape[1:] == (28, 28) and x.dtype == np.uint8 and len(x) + len(xt) == 1797
    assert set(np.unique(y)) == set(np.unique(yt)) == set(range(10))
    for c in range(10):  # 30% of each class held out
        n = (y == c).sum() + (yt == c).sum()
        assert (yt == c).sum() == round(0.3 * n)
    # no test image is a training image, whatever the seed of an experiment
    train_rows = {im.tobytes() for im in x}
    assert not any(im.tobytes() in train_rows for im in xt)
    again, _ = load_dataset("digits", "test")
    assert np.array_equal(again, xt)
    with pytest.raises(ValueError, match="unknown data set"):
        load_dataset("mnist", "train")
