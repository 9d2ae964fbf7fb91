"""Issue 4, end to end through HTTP only: ingest a Fashion-MNIST gallery with an old model,
register a RACT-trained new model, POST /upgrade, two Celery worker processes drain it; the live
NFR and mAP the service reported at its checkpoints agree within 1 point with the offline
evaluator's for the same ordering on the same gallery: the paper's plan against
``models.evaluate.backfill_curve``, and ``auto`` (the live chooser) against the offline maths of
the plan it chose at each checkpoint (``models.plans``), fitted from the same cut.

The offline side uses only the checkpoint files and the images we uploaded: it re-derives the
margin ordering from the old vectors and the new classifier, exactly as the paper's evaluation
does, and uses the probes' protocol (every labeled gallery item a leave-one-out query).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from cli.launcher import System
from models.checkpoint import load_checkpoint
from models.evaluate import backfill_curve
from models.metrics import evaluate_scores, negative_flip_rate
from models.plans import REASONS
from models.uncertainty import backfill_order, score_uncertainty
from service.settings import Settings
from tests.utils.system import ADMIN, FAST_ENV, get_upgrade, ingest, logs_of, register, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 300
TOLERANCE = 0.01  # one point


def _offline_point(
    live: dict, order: np.ndarray, g_old: torch.Tensor, g_new: torch.Tensor, labels: np.ndarray, old_top1: np.ndarray
) -> dict:
    """The plan the service chose at this checkpoint, fitted and measured offline at the same cut."""
    from models.plans import build_spec, mixed_scores

    n = int(round(live["fraction"] * len(order)))
    moved = np.asarray(order[:n])
    mask = torch.zeros(len(order), dtype=torch.bool)
    mask[torch.as_tensor(moved, dtype=torch.long)] = True
    old_np, new_np = g_old.numpy(), g_new.numpy()
    spec = build_spec(
        live.get("plan") or "paper",
        old_space=old_np[~mask.numpy()],
        new_space=np.concatenate([new_np, new_np[moved]]),
        pairs=(old_np[moved], new_np[moved]),
    )
    r = evaluate_scores(
        mixed_scores(spec, g_old, g_new, g_old, g_new, mask), labels, labels, exclude=np.arange(len(order))
    )
    return {"map": r.map, "nfr": negative_flip_rate(old_top1, r.top1_correct)}


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


@pytest.mark.parametrize("plan", ["paper", "auto"])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_http_only_hot_refresh_live_metrics_match_offline_curve(
    settings_env: Settings,
    trained_pair: tuple[Path, Path],
    fmnist_test: tuple[np.ndarray, np.ndarray],
    tmp_path: Path,
    plan: str,
) -> None:
    images, labels = fmnist_test[0][:N], fmnist_test[1][:N]
    settings_env.models_path.mkdir(parents=True, exist_ok=True)
    paths = [Path(shutil.copy(p, settings_env.models_path / p.name)) for p in trained_pair]
    env = {**FAST_ENV, "HOTREFRESH_NFR_CHECKPOINT_EVERY": "0.1", "HOTREFRESH_PROBE_SIZE": str(N)}
    with System(tmp_path / "sys", env=env) as system:
        api = system.start_api(name="api")
        old_name = register(api.url, paths[0])["name"]
        new_name = register(api.url, paths[1])["name"]
        ingest(api.url, images, labels)
        workers = [system.start_worker(name=f"w{i}") for i in (1, 2)]
        logs = logs_of(api, *workers)
        body = {"model": new_name, "strategy": "margin", "batch_size": 4, "plan": plan}
        r = httpx.post(f"{api.url}/upgrade", json=body, headers=ADMIN, timeout=30)
        assert r.status_code == 202, r.text
        uid = r.json()["id"]
        final = wait_for(
            lambda: (u := get_upgrade(api.url, uid))["state"] == "completed" and u, 240, "the upgrade to complete", logs
        )
        models = httpx.get(f"{api.url}/models").json()
        # the operator's CLI reads the same thing through the API
        cli = subprocess.run(
            [sys.executable, "-m", "cli", "upgrade", "status", str(uid), "--json", "--api", api.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert json.loads(cli.stdout)["state"] == "completed"
        refused = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "upgrade",
                "pause",
                str(uid),
                "--api",
                api.url,
                "--token",
                ADMIN["Authorization"].split()[1],
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert refused.returncode == 4 and "409" in refused.stderr
        scraped = [scrape(w.url) for w in workers]
        # both worker processes did part of the work
        done_by = {w.name: w.log_tail(400).count("succeeded") for w in workers}
    assert all(n > 0 for n in done_by.values()), done_by
    # each worker's /metrics sums its pool processes; across workers the counters add up to N
    done_counts = [
        m.get(("hotrefresh_backfill_items_total", (("status", "done"), ("upgrade", str(uid)))), 0.0) for m in scraped
    ]
    assert sum(done_counts) == N and all(c > 0 for c in done_counts), done_counts
    assert all(m.get(("hotrefresh_backfill_batch_seconds_count", ()), 0) > 0 for m in scraped)
    assert models["query_model"] == new_name and models["gallery_model"] == new_name
    assert final["done"] == N and final["failed"] == 0 and final["fraction"] == 1.0
    assert final["baseline"]["probes"] == N
    points = final["checkpoints"]
    assert points[0]["fraction"] == 0.0 and points[-1]["fraction"] == 1.0 and len(points) >= 6
    assert all(p.get("quiesced", True) for p in points)  # every checkpoint measured at a clean cut

    # the offline evaluator on the same gallery, same ordering, same protocol
    old = load_checkpoint(paths[0], device="cpu")
    new = load_checkpoint(paths[1], device="cpu")
    assert old.meta.name == old_name
    pil = [Image.fromarray(a) for a in images]
    g_old_np = old.embed_images(pil)
    g_old, g_new = torch.from_numpy(g_old_np), torch.from_numpy(new.embed_images(pil))
    self_cols = np.arange(N)
    old_top1 = evaluate_scores(g_old @ g_old.T, labels, labels, exclude=self_cols).top1_correct
    w, b = new.classifier_weights()
    order = backfill_order(score_uncertainty(g_old_np, w, b, "margin"))
    if plan == "paper":
        offline = backfill_curve(
            g_new, g_old, g_new, labels, labels, order, [p["fraction"] for p in points], old_top1, exclude=self_cols
        )
    else:
        offline = [_offline_point(p, order, g_old, g_new, labels, old_top1) for p in points]
        assert points[0]["plan"] == "dual" and all(
            set(p["candidates"]) == {"paper", "dual", "transform", "blend"} for p in points[:-1]
        )
        # every choice says why; unless no candidate reached it, the served probe mAP is the old system's or more
        assert points[0]["reason"] == "start" and all(p["reason"] in REASONS for p in points[:-1])
        old_map = final["baseline"]["old_map"]
        assert all(p["map"] >= old_map - 1e-9 for p in points[:-1] if p["reason"] != "none_at_old_map"), points
    assert final["baseline"]["old_top1_rate"] == pytest.approx(float(old_top1.mean()), abs=1e-9)
    report = []
    for live, ref in zip(points, offline, strict=True):
        report.append((live["fraction"], live["nfr"], ref["nfr"], live["map"], ref["map"]))
        assert live["nfr"] is not None and ref["nfr"] is not None
        assert abs(live["nfr"] - ref["nfr"]) <= TOLERANCE, report
        assert abs(live["map"] - ref["map"]) <= TOLERANCE, report
    # at the ends the gallery is the same set of vectors: the numbers are the same
    assert points[0]["map"] == pytest.approx(offline[0]["map"], abs=1e-6)
    assert points[-1]["map"] == pytest.approx(offline[-1]["map"], abs=1e-6)
    print("fraction, live NFR, offline NFR, live mAP, offline mAP:")
    for row in report:
        print("  " + ", ".join(f"{v:.4f}" for v in row))
