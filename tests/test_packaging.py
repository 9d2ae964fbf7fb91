"""The built package carries the documentation pages' static files (pyproject.toml's
package-data): an installed service serves /docs and /redoc without the source tree."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from service.api.docs import STATIC_DIR

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("service", "workers", "models", "cli")

pytestmark = pytest.mark.slow


def test_the_wheel_ships_every_static_file_of_the_docs_pages(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), "."],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    (wheel,) = tmp_path.glob("hotrefresh-*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    wanted = {f"service/api/static/{p.relative_to(STATIC_DIR)}" for p in STATIC_DIR.rglob("*") if p.is_file()}
    assert len(wanted) >= 10  # the two bundles, the stylesheet, the icon, licences, VERSIONS.md
    assert wanted <= shipped, sorted(wanted - shipped)
