"""The backfill loader's read + decode, side by side: ``load_pixels`` (PNGs already in the
model's mode and size decoded by libpng through imagecodecs) against the PIL path it replaced
(``load_images`` then ``pil_to_uint8``), on the same Fashion-MNIST PNGs in a real image store.
Both paths run in alternation, ``--repeat`` rounds, one thread: what the loader costs the core it
shares with the encoder (benchmark B1). The pixels are checked equal before anything is timed.

    nice .venv/bin/python benchmarks/image_loading.py   # -> benchmarks/results/image_loading.json
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from index_bench import RESULTS, machine, table, write_json

from models.data import load_fashion_mnist
from models.preprocess import pil_to_uint8
from service.imagestore import LocalImageStore
from service.upgrade.images import load_images, load_pixels
from tests.utils.gallery import png


def pil_path(store: LocalImageStore, keys: list[str], meta: SimpleNamespace) -> np.ndarray:
    images, _ = load_images(store, keys)
    return pil_to_uint8(images, meta)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="images (Fashion-MNIST test split)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "image_loading.json")
    args = ap.parse_args()

    images = load_fashion_mnist("test")[0][: args.n]
    meta = SimpleNamespace(input_channels=1, input_size=(28, 28), mean=0.0, std=1.0, resize="center_crop",
                           crop_ratio=1.0)
    with tempfile.TemporaryDirectory(prefix="loading-") as tmp:
        store = LocalImageStore(Path(tmp))
        keys = [store.put(png(a)) for a in images]
        fast, ok, errors = load_pixels(store, keys, meta)
        if errors or not np.array_equal(fast, pil_path(store, keys, meta)):
            raise SystemExit("load_pixels and the PIL path disagree: nothing timed")
        paths = {"pil (load_images + pil_to_chw)": lambda: pil_path(store, keys, meta),
                 "load_pixels (libpng shortcut)": lambda: load_pixels(store, keys, meta)}
        cpu: dict[str, list[float]] = {k: [] for k in paths}
        for _ in range(args.repeat):
            for name, fn in paths.items():  # alternated, so both see the same machine
                t0 = time.process_time()
                fn()
                cpu[name].append(time.process_time() - t0)
    us = {k: 1e6 * statistics.median(v) / args.n for k, v in cpu.items()}
    (pil_name, fast_name) = list(paths)
    ratio = us[pil_name] / us[fast_name]
    rows = [[k, us[k], args.n / statistics.median(cpu[k])] for k in paths]
    print(table(["path", "CPU us/image (median)", "images/s"], rows))
    print(f"PIL path / load_pixels = {ratio:.2f}")
    write_json(args.out, {
        "benchmark": "backfill image loading (store read + decode to the model's uint8 input)",
        "config": {"n": args.n, "repeat": args.repeat, "image": "Fashion-MNIST 28x28 8-bit grey PNG"},
        "machine": machine(),
        "cpu_us_per_image": us, "cpu_seconds_each_round": cpu, "pil_over_load_pixels": ratio,
    })
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
