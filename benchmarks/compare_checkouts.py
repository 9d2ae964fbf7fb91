"""Run one benchmark from two checkouts alternately, on the same machine in one run, and keep
both sets of results side by side: the way a change is shown to be no slower here (a shared,
noisy 2-core machine drifts by a fifth between runs, so only alternated runs compare).

Each run executes that checkout's own copy of the script with that checkout as the working
directory (so it imports that checkout's code), writes its JSON to a temporary file, and the
records are collected under ``base`` and ``head`` with the headline numbers printed:

    git worktree add /tmp/base <previous-commit>
    .venv/bin/python benchmarks/compare_checkouts.py --base /tmp/base --rounds 2 \\
        b4_search_http.py -- --gallery 3000 --queries 300
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# The numbers each benchmark is judged by: JSON paths into its result (dots; ints index lists).
HEADLINES: dict[str, dict[str, str]] = {
    "b4_search_http.py": {
        "http p50 ms": "http_ms.p50",
        "http p99 ms": "http_ms.p99",
        "in-process p50 ms": "in_process_ms.p50",
        "dual http p50 ms": "during_upgrade.dual.http_ms.p50",
        "dual in-process p50 ms": "during_upgrade.dual.in_process_ms.p50",
    },
    "search_in_process.py": {
        "p50 ms": "no upgrade.p50_ms",
        "mean ms": "no upgrade.mean_ms",
        "dual p50 ms": "dual.p50_ms",
        "dual mean ms": "dual.mean_ms",
    },
    "pg_bulk.py": {
        "postgresql ingest items/s": "runs.after.postgresql.ingest.items_per_s",
        "postgresql read s": "runs.after.postgresql.read.wall_s",
        "sqlite ingest items/s": "runs.after.sqlite.ingest.items_per_s",
        "sqlite read s": "runs.after.sqlite.read.wall_s",
    },
    "b1_backfill.py": {
        "raw items/s": "runs.0.raw_items_per_s",
        "backfill items/s": "runs.0.backfill.items_per_s",
        "ratio": "runs.0.ratio",
    },
}


def pick(doc: Any, path: str) -> float | None:
    for part in path.split("."):
        if isinstance(doc, list):
            doc = doc[int(part)] if part.isdigit() and int(part) < len(doc) else None
        elif isinstance(doc, dict):
            doc = doc.get(part)
        else:
            return None
    return float(doc) if isinstance(doc, int | float) else None


def run_once(
    checkout: Path, script: str, args: list[str], out: Path, script_root: Path | None = None
) -> dict[str, Any]:
    cmd = [sys.executable, str((script_root or checkout) / "benchmarks" / script), *args, "--out", str(out)]
    started = time.time()
    subprocess.run(cmd, cwd=checkout, check=True, env=_env(checkout))
    doc = json.loads(out.read_text())
    doc["_wall_s"] = time.time() - started
    return doc


def _env(checkout: Path) -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(checkout)  # that checkout's packages, not this one's editable install
    return env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", type=Path, required=True, help="the other checkout (e.g. a worktree of HEAD~1)")
    ap.add_argument("--rounds", type=int, default=2, help="alternated base/head pairs (the order flips each round)")
    ap.add_argument("--out", type=Path, default=None, help="default: results/compare_<script>.json")
    ap.add_argument(
        "--same-script",
        action="store_true",
        help="run this checkout's copy of the script for both (a script that imports from its working "
        "directory, written after the base commit). Not for a script importing index_bench: that puts "
        "its own checkout first on sys.path, so base would run this checkout's code",
    )
    ap.add_argument("script", help="a script in benchmarks/, e.g. b4_search_http.py")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="after --: the script's own arguments")
    ns = ap.parse_args()
    args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
    out = ns.out or HERE / "results" / f"compare_{Path(ns.script).stem}.json"
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(ns.rounds):
            order = (("base", ns.base.resolve()), ("head", ROOT))
            for label, checkout in order if r % 2 == 0 else order[::-1]:
                print(f"round {r + 1}/{ns.rounds}: {label} ({checkout})", flush=True)
                root = ROOT if ns.same_script else None
                runs[label].append(run_once(checkout, ns.script, args, Path(tmp) / f"{label}-{r}.json", root))
    headlines = HEADLINES.get(ns.script, {})
    summary: dict[str, dict[str, float | None]] = {}
    for name, path in headlines.items():
        per = {label: [v for v in (pick(d, path) for d in docs) if v is not None] for label, docs in runs.items()}
        base = statistics.median(per["base"]) if per["base"] else None
        head = statistics.median(per["head"]) if per["head"] else None
        summary[name] = {"base": base, "head": head, "head_over_base": head / base if base and head else None}
        print(f"{name:>24}: base {base}  head {head}  head/base {summary[name]['head_over_base']}")
    record = {
        "benchmark": f"{ns.script} from two checkouts, alternated ({ns.rounds} rounds)",
        "script_args": args,
        "base": str(ns.base),
        "base_commit": _commit(ns.base),
        "head_commit": _commit(ROOT),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary_medians": summary,
        "runs": runs,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")


def _commit(checkout: Path) -> str:
    res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True)
    return res.stdout.strip()


if __name__ == "__main__":
    main()
