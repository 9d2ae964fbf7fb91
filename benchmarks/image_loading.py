"""Decoding stored images to a model's uint8 input, side by side: the project's byte path
(``service.images.pixels_of``: libpng straight into the array for PNGs already at the model's
mode and size, JPEGs decoded at reduced DCT scale) against plain Pillow (open, full decode,
``pil_to_chw``), on the same images, one thread, alternated ``--repeat`` rounds: what the loader
costs the core it shares with the encoder (benchmark B1).

Cases: Fashion-MNIST 28 x 28 grey PNGs for a 28 x 28 grey model (the pixels must be equal), and
colour JPEGs (``models.data.colourize``, quality 90) for RGB models at 64 and 224 (the pixels
differ by the DCT scaling's rounding; the mean absolute difference is reported).

    nice .venv/bin/python benchmarks/image_loading.py   # -> benchmarks/results/image_loading.json
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from index_bench import RESULTS, machine, table, write_json
from PIL import Image

from models.data import colourize, encode_png, load_fashion_mnist
from models.preprocess import pil_to_chw
from service.images import pixels_of


def _meta(c: int, size: int) -> SimpleNamespace:
    return SimpleNamespace(
        input_channels=c, input_size=(size, size), mean=0.0, std=1.0, resize="center_crop", crop_ratio=1.0
    )


def _jpeg(a: np.ndarray, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a.transpose(1, 2, 0)).resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def pillow(blobs: list[bytes], meta: SimpleNamespace) -> np.ndarray:
    return np.stack([pil_to_chw(Image.open(io.BytesIO(b)), meta) for b in blobs])


def ours(blobs: list[bytes], meta: SimpleNamespace) -> np.ndarray:
    return np.stack([pixels_of(b, meta) for b in blobs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="images per case")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path, default=RESULTS / "image_loading.json")
    args = ap.parse_args()

    grey = load_fashion_mnist("test")[0][: args.n]
    colour = colourize(grey[: args.n], 256, seed=0)
    cases = {
        "PNG 28x28 grey -> 1x28": ([encode_png(a) for a in grey], _meta(1, 28)),
        "JPEG 320x256 -> 3x64": ([_jpeg(a, (320, 256)) for a in colour], _meta(3, 64)),
        "JPEG 640x480 -> 3x224": ([_jpeg(a, (640, 480)) for a in colour[: args.n // 4]], _meta(3, 224)),
    }
    results: dict[str, dict[str, float]] = {}
    rows = []
    for name, (blobs, meta) in cases.items():
        a, b = ours(blobs, meta).astype(np.int16), pillow(blobs, meta).astype(np.int16)
        diff = float(np.abs(a - b).mean())
        if name.startswith("PNG") and diff != 0:
            raise SystemExit(f"{name}: the PNG shortcut's pixels differ from Pillow's: nothing timed")
        cpu: dict[str, list[float]] = {"pillow": [], "pixels_of": []}
        for _ in range(args.repeat):
            for label, fn in (("pillow", pillow), ("pixels_of", ours)):  # alternated: the same machine
                t0 = time.process_time()
                fn(blobs, meta)
                cpu[label].append(time.process_time() - t0)
        us = {k: 1e6 * statistics.median(v) / len(blobs) for k, v in cpu.items()}
        results[name] = {
            "images": len(blobs),
            "pillow_cpu_us": us["pillow"],
            "pixels_of_cpu_us": us["pixels_of"],
            "pillow_over_pixels_of": us["pillow"] / us["pixels_of"],
            "mean_abs_pixel_difference": diff,
        }
        rows.append([name, len(blobs), us["pillow"], us["pixels_of"], us["pillow"] / us["pixels_of"], diff])
    print(
        table(
            [
                "case",
                "images",
                "Pillow CPU us/img",
                "pixels_of CPU us/img",
                "Pillow / ours",
                "mean |diff| (grey levels)",
            ],
            rows,
        )
    )
    write_json(
        args.out,
        {
            "benchmark": "decode of stored images to the model's uint8 input: pixels_of vs plain Pillow",
            "config": {"n": args.n, "repeat": args.repeat},
            "machine": machine(),
            "cases": results,
        },
    )
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
