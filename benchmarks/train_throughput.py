"""Training and inference throughput (images/s) of each encoder architecture on this machine.

Each architecture trains on random 28x28 batches (forward, CE backward, AdamW step) and embeds
batches in inference mode; architectures alternate rep by rep so they see the same machine noise.
Reported: median images/s per architecture and the ratio to ``conv2`` (the small "old" model).

    nice .venv/bin/python benchmarks/train_throughput.py   # -> benchmarks/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from index_bench import RESULTS, table, timed, write_json

from models.encoders import create_model, list_architectures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5, help="train steps per timed rep")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = torch.device(args.device)
    out = args.out or RESULTS / f"train_throughput_{dev.type}.json"
    torch.manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    archs = list_architectures()
    models = {a: create_model(a, args.dim, 10).to(dev) for a in archs}
    opts = {a: torch.optim.AdamW(m.parameters(), 1e-3) for a, m in models.items()}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train(a: str) -> None:
        m, o = models[a].train(), opts[a]
        for _ in range(args.steps):
            _, logits = m(x)
            F.cross_entropy(logits, y).backward()
            o.step()
            o.zero_grad(set_to_none=True)
        sync()

    def infer(a: str) -> None:
        m = models[a].eval()
        with torch.inference_mode():
            for _ in range(args.steps):
                m.embedding(x)
        sync()

    for a in archs:  # warm-up
        train(a)
        infer(a)
    t_train: dict[str, list[float]] = {a: [] for a in archs}
    t_infer: dict[str, list[float]] = {a: [] for a in archs}
    for _ in range(args.reps):
        for a in archs:
            t_train[a].append(timed(lambda a=a: train(a)))
            t_infer[a].append(timed(lambda a=a: infer(a)))
    imgs = args.batch * args.steps
    res = {}
    for a in archs:
        res[a] = {
            "params": sum(p.numel() for p in models[a].parameters()),
            "train_images_per_s": imgs / statistics.median(t_train[a]),
            "embed_images_per_s": imgs / statistics.median(t_infer[a]),
        }
    base = res["conv2"]
    rows = []
    for a in archs:
        res[a]["train_ratio_to_conv2"] = res[a]["train_images_per_s"] / base["train_images_per_s"]
        rows.append([a, res[a]["params"], res[a]["train_images_per_s"], res[a]["embed_images_per_s"],
                     res[a]["train_ratio_to_conv2"]])  # fmt: skip
    print(table(["arch", "params", "train img/s", "embed img/s", "train vs conv2"], rows))
    write_json(out, {
        "benchmark": "encoder training/inference throughput, 28x28 grey images",
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "batch": args.batch, "embedding_dim": args.dim, "architectures": res,
    })  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
