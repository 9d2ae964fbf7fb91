"""The layer contracts of docs/design.md hold on the tree, and they are not vacuous: the same
check fails on a copy of the tree with one forbidden import added, whichever layer it crosses."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "workers", "service", "models")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first, so the copy's packages are analysed rather than the installed ones.
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), str(tree / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_tree_keeps_every_contract() -> None:
    run = _lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 broken" in run.stdout


@pytest.mark.parametrize(
    ("module", "forbidden", "contract"),
    [
        ("service/metrics.py", "import workers.tasks", "models <- service <- workers"),
        ("models/metrics.py", "import service.settings", "models <- service <- workers"),
        ("service/repositories/items.py", "import service.upgrade.control", "inside service"),
        ("service/upgrade/view.py", "import service.api.app", "inside service"),
    ],
)
def test_a_forbidden_import_breaks_the_build(tmp_path: Path, module: str, forbidden: str, contract: str) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy2(ROOT / "pyproject.toml", tree / "pyproject.toml")
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    target = tree / module
    target.write_text(target.read_text() + f"\n{forbidden}  # deliberate violation\n")
    run = _lint(tree)
    assert run.returncode != 0
    assert "BROKEN" in run.stdout and contract in run.stdout, run.stdout
