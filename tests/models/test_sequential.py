"""The sequential-upgrade experiment (Sec. 5.4) on a small scale: its structure and invariants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from models.checkpoint import read_meta
from models.sequential import SequentialConfig, run_sequential

pytest.importorskip("sklearn")


def test_generations_chain_their_compatibility_and_no_refresh_starts_where_hot_refresh_does(tmp_path: Path) -> None:
    cfg = SequentialConfig(
        dataset="digits",
        seeds=[0],
        methods=["ract"],
        epochs=1,
        batch_size=64,
        train_limit=None,
        n_queries=60,
        n_gallery=120,
        fractions=[0.0, 0.5, 1.0],
        embedding_dim=16,
    )
    summary = run_sequential(cfg, tmp_path / "out", tmp_path / "models")
    mdir = tmp_path / "models" / "digits" / "seed0"
    metas = [read_meta(mdir / "gen1.pt")] + [read_meta(mdir / f"ract-gen{t}.pt") for t in (2, 3, 4)]
    assert [m.compatible_with for m in metas] == [None, metas[0].name, metas[1].name, metas[2].name]
    n_train = [m.extra["n_train"] for m in metas]
    assert n_train == sorted(n_train) and n_train[0] < n_train[-1]
    rows = summary["rows"]
    assert [(r["method"], r["generation"]) for r in rows] == [("ract", 2), ("ract", 3), ("ract", 4)]
    # generation 2's upgrade starts from generation 1's gallery: no refresh and hot refresh at 0% are one number
    assert rows[0]["no_refresh_map"] == pytest.approx(rows[0]["hot_paper"]["map_at_0"], abs=1e-9)
    # every later upgrade starts from the system its predecessor finished (queries and gallery of gen t-1)
    for prev, row in zip(rows, rows[1:], strict=False):
        assert row["previous_old_to_old_map"] == pytest.approx(prev["hot_paper"]["map_final"], abs=1e-9)
        assert row["previous_old_to_old_map"] == pytest.approx(prev["new_to_new_map"], abs=1e-9)
    md = (tmp_path / "out" / "digits" / "sequential.md").read_text()
    assert "| ract | 4 (100%) |" in md
    assert json.loads((tmp_path / "out" / "digits" / "sequential.json").read_text())["checks"]
