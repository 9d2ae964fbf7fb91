import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint
from models.evaluate import backfill_curve, evaluate_backfill, markdown_table, parse_fractions, write_outputs
from models.experiment import aggregate, check_claims
from tests.utils.checkpoints import make_tiny_checkpoint


def test_backfill_curve_on_a_constructed_gallery() -> None:
    """Two gallery items of class 0 and 1, one query of class 0.

    Old gallery: the positive scores 0.5, the negative 0.4 (top-1 right). Backfilling the negative
    first raises it to 0.9 (a negative flip); backfilling the positive then fixes it.
    """
    q = torch.tensor([[1.0, 0.0]])
    g_old = torch.tensor([[0.5, 0.0], [0.4, 0.0]])
    g_new = torch.tensor([[1.0, 0.0], [0.9, 0.0]])
    pts = backfill_curve(
        q, g_old, g_new, np.array([0]), np.array([0, 1]), np.array([1, 0]), [0, 0.5, 1], np.array([True])
    )
    assert [p["nfr"] for p in pts] == [0.0, 1.0, 0.0]
    assert [p["map"] for p in pts] == [1.0, 0.5, 1.0]
    pts2 = backfill_curve(q, g_old, g_new, np.array([0]), np.array([0, 1]), np.array([0, 1]), [0.5], np.array([True]))
    assert pts2[0]["nfr"] == 0.0  # the poor-first order would have avoided the flip


def test_parse_fractions() -> None:
    assert parse_fractions("0,10,50,100") == (0.0, 0.1, 0.5, 1.0)
    assert parse_fractions("0.2,0") == (0.0, 0.2)
    with pytest.raises(ValueError):
        parse_fractions("0,150,-1")


def test_evaluate_backfill_writes_schema(tmp_path: Path) -> None:
    make_tiny_checkpoint(tmp_path / "o.pt", "o", embedding_dim=8, seed=0)
    make_tiny_checkpoint(tmp_path / "n.pt", "n", embedding_dim=8, seed=1, arch="conv4", compatible_with="o")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 3, 60)
    old = load_checkpoint(tmp_path / "o.pt", device="cpu")
    doc = evaluate_backfill(
        old,
        {"ract": load_checkpoint(tmp_path / "n.pt", device="cpu"), "vanilla": old},
        images,
        labels,
        np.arange(10),
        np.arange(10, 60),
        orderings=["random", "margin"],
        fractions=[0, 0.5, 1.0],
        meta={"dataset": "x", "allocation": "expansion"},
    )
    assert doc["dataset"] == "x" and doc["metric"] == "map"
    assert {(c["method"], c["ordering"]) for c in doc["curves"]} == {
        ("ract", "random"),
        ("ract", "margin"),
        ("vanilla", "random"),
        ("vanilla", "margin"),
    }
    van = next(c for c in doc["curves"] if c["method"] == "vanilla")
    # "new" == old model: every step equals old-to-old, and no query flips
    assert all(p["map"] == pytest.approx(doc["old_to_old"]["map"]) for p in van["points"])
    assert all(p["nfr"] in (0.0, None) for p in van["points"])
    ract = next(c for c in doc["curves"] if c["method"] == "ract")
    assert ract["points"][-1]["map"] == pytest.approx(doc["new_to_new"]["ract"]["map"])
    paths = write_outputs(doc, tmp_path / "out")
    assert json.loads(paths["json"].read_text())["curves"]
    assert "| ract, random |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="unknown ordering"):
        evaluate_backfill(old, {}, images, labels, np.arange(5), np.arange(5, 20), orderings=["best"])


def _doc(ract_map, van_map, ract_nfr, van_nfr, margin_map=None, o2o=0.5):
    fr = [0, 0.2, 0.4, 0.6, 0.8, 1.0]

    def pts(maps, nfrs):
        return [{"fraction": f, "map": m, "top1": m, "nfr": n} for f, m, n in zip(fr, maps, nfrs, strict=True)]

    curves = [
        {"method": "ract", "ordering": "random", "points": pts(ract_map, ract_nfr)},
        {"method": "vanilla", "ordering": "random", "points": pts(van_map, van_nfr)},
    ]
    if margin_map:
        curves.append({"method": "ract", "ordering": "margin", "points": pts(margin_map, ract_nfr)})
    return {
        "dataset": "d",
        "allocation": "a",
        "metric": "map",
        "n_queries": 1,
        "n_gallery": 1,
        "seed": 0,
        "old_to_old": {"map": o2o, "top1": o2o},
        "new_to_new": {"ract": {"map": 1, "top1": 1}},
        "curves": curves,
    }


def test_check_claims_hold_and_fail() -> None:
    good = _doc(
        [0.6, 0.61, 0.62, 0.63, 0.64, 0.65],
        [0.6, 0.58, 0.57, 0.58, 0.6, 0.62],
        [0.1, 0.05, 0.05, 0.05, 0.05, 0.05],
        [0.1, 0.08, 0.08, 0.08, 0.08, 0.08],
        margin_map=[0.6, 0.62, 0.63, 0.64, 0.65, 0.65],
    )
    c = check_claims(good)
    assert all(v["holds"] for v in c.values()), c
    bad = _doc(
        [0.4, 0.39, 0.3, 0.35, 0.4, 0.45],
        [0.6] * 6,
        [0.1, 0.09, 0.09, 0.09, 0.09, 0.09],
        [0.1] + [0.05] * 5,
        margin_map=[0.4, 0.3, 0.3, 0.3, 0.3, 0.45],
    )
    c = check_claims(bad)
    assert not any(v["holds"] for v in c.values()), c
    assert c["c_ract_no_step_drop_over_0.5pt"]["largest_drop_pts"]["random"] == pytest.approx(9.0)


def test_aggregate_mean_and_std() -> None:
    a = _doc([0.6] * 6, [0.5] * 6, [0.1] * 6, [0.2] * 6)
    b = _doc([0.8] * 6, [0.5] * 6, [0.3] * 6, [None] * 6)
    b["seed"] = 1
    m = aggregate([a, b])
    p = m["curves"][0]["points"][0]
    assert m["seeds"] == [0, 1]
    assert p["map"] == pytest.approx(0.7) and p["map_std"] == pytest.approx(0.1)
    assert m["curves"][1]["points"][0]["nfr"] == pytest.approx(0.2)  # None (undefined) is skipped
    assert "±" in markdown_table(m)
