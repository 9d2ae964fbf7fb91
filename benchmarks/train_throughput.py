"""Training and encoding throughput (images/s) of each backbone on this machine, at the input
sizes the project uses them at.

Training: forward, cross-entropy backward and an AdamW step on random batches. Encoding: the
backfill's own path, ``LoadedModel.embed_tensor`` on uint8 batches at the model's size (the traced
TorchScript graph, normalisation included). Configurations alternate rep by rep so they see the
same machine noise; reported: median images/s and the ratio to ``conv2`` at 28 x 28.

    nice .venv/bin/python benchmarks/train_throughput.py   # -> benchmarks/results/train_throughput_<device>.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from index_bench import RESULTS, table, timed, write_json

from models.checkpoint import LoadedModel, ModelMeta
from models.encoders import create_model

# name: (arch, channels, size, options, batch); the demo's colour models, the README's
# `train --arch resnet18 --size 64 --channels 3`, and the paper's backbones at 224.
CONFIGS: dict[str, tuple[str, int, int, dict[str, Any], int]] = {
    "conv2 1x28": ("conv2", 1, 28, {}, 256),
    "conv4 1x28": ("conv4", 1, 28, {}, 256),
    "conv2 3x32 (colour demo, old)": ("conv2", 3, 32, {}, 256),
    "resnet18 w8 1-1-1-1 3x48": ("resnet18", 3, 48, {"width": 8, "blocks": [1, 1, 1, 1], "stem": "small"}, 128),
    "resnet18 w16 1-1-1-1 3x32 (colour demo, new)": (
        "resnet18",
        3,
        32,
        {"width": 16, "blocks": [1, 1, 1, 1], "stem": "small"},
        128,
    ),
    "resnet18 3x64 small stem": ("resnet18", 3, 64, {"stem": "small"}, 32),
    "resnet18 3x224": ("resnet18", 3, 224, {}, 32),
    "resnet50 3x224": ("resnet50", 3, 224, {}, 16),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3, help="batches per timed rep")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--only", default=None, help="comma-separated substrings of configuration names")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    out = args.out or RESULTS / f"train_throughput_{dev.type}.json"
    names = [n for n in CONFIGS if not args.only or any(s in n for s in args.only.split(","))]
    torch.manual_seed(0)
    state: dict[str, dict[str, Any]] = {}
    for n in names:
        arch, c, size, options, batch = CONFIGS[n]
        model = create_model(arch, args.dim, 10, c, **options).to(dev)
        meta = ModelMeta(
            name=n,
            arch=arch,
            embedding_dim=args.dim,
            num_classes=10,
            input_channels=c,
            input_size=(size, size),
            arch_options=options,
        )
        state[n] = {
            "model": model,
            "opt": torch.optim.AdamW(model.parameters(), 1e-3),
            "batch": batch,
            "x": torch.randn(batch, c, size, size, device=dev),
            "y": torch.randint(0, 10, (batch,), device=dev),
            "pixels": np.random.default_rng(0).integers(0, 256, (batch, c, size, size), dtype=np.uint8),
            "params": sum(p.numel() for p in model.parameters()),
        }
        state[n]["loaded"] = LoadedModel(create_model(arch, args.dim, 10, c, **options), meta, dev, batch_size=batch)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train(n: str) -> None:
        s = state[n]
        m, o = s["model"].train(), s["opt"]
        for _ in range(args.steps):
            _, logits = m(s["x"])
            F.cross_entropy(logits, s["y"]).backward()
            o.step()
            o.zero_grad(set_to_none=True)
        sync()

    def encode(n: str) -> None:
        s = state[n]
        for _ in range(args.steps):
            s["loaded"].embed_tensor(s["pixels"])
        sync()

    for n in names:  # warm-up (and the trace of the encoding graph)
        train(n)
        state[n]["loaded"].warm_up()
        encode(n)
    t_train: dict[str, list[float]] = {n: [] for n in names}
    t_enc: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.reps):
        for n in names:
            t_train[n].append(timed(lambda n=n: train(n)))
            t_enc[n].append(timed(lambda n=n: encode(n)))
    res: dict[str, dict[str, Any]] = {}
    for n in names:
        imgs = state[n]["batch"] * args.steps
        arch, c, size, options, batch = CONFIGS[n]
        res[n] = {
            "arch": arch,
            "channels": c,
            "size": size,
            "options": options,
            "batch": batch,
            "params": state[n]["params"],
            "train_images_per_s": imgs / statistics.median(t_train[n]),
            "encode_images_per_s": imgs / statistics.median(t_enc[n]),
        }
    base = res.get("conv2 1x28")
    rows = []
    for n in names:
        if base:
            res[n]["encode_ratio_to_conv2"] = res[n]["encode_images_per_s"] / base["encode_images_per_s"]
        rows.append(
            [
                n,
                res[n]["params"],
                res[n]["train_images_per_s"],
                res[n]["encode_images_per_s"],
                res[n].get("encode_ratio_to_conv2", float("nan")),
            ]
        )
    print(table(["backbone, input", "params", "train img/s", "encode img/s", "encode vs conv2"], rows))
    write_json(
        out,
        {
            "benchmark": "encoder training and encoding throughput per backbone and input size",
            "device": torch.cuda.get_device_name(0)
            if dev.type == "cuda"
            else f"cpu ({torch.get_num_threads()} threads)",
            "embedding_dim": args.dim,
            "steps": args.steps,
            "reps": args.reps,
            "configurations": res,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
