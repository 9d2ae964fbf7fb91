"""The provisioned dashboard is one Grafana accepts: typed with ``@grafana/schema`` at the version
of the compose file's Grafana image and compiled with ``tsc --strict`` (tests/deploy/grafana_schema.py).
The check is shown to fail on a copy of the dashboard with a key Grafana does not know."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.grafana_schema import SCHEMA_DIR, check, node_binary, schema_installed, schema_version
from tests.deploy.prom import DASHBOARD_JSON, REPO

pytestmark = pytest.mark.skipif(node_binary() is None, reason="node is not installed (Debian 'nodejs' and 'npm')")


@pytest.fixture(scope="module")
def installed() -> None:
    assert schema_installed(), f"@grafana/schema and typescript are not installed: run `npm ci` in {SCHEMA_DIR}"


def _grafana_image_version() -> str:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    image = services["grafana"]["image"]
    m = re.fullmatch(r"grafana/grafana(?:-oss)?:(\d+\.\d+\.\d+)", image)
    assert m, f"the compose file's Grafana image is not pinned to a release: {image}"
    return m.group(1)


def test_schema_is_pinned_to_the_compose_files_grafana(installed: None) -> None:
    pinned = json.loads((SCHEMA_DIR / "package.json").read_text())["devDependencies"]["@grafana/schema"]
    assert pinned == _grafana_image_version()
    assert schema_version() == pinned  # what `npm ci` installed from package-lock.json


def test_dashboard_compiles_against_grafanas_schema(installed: None, tmp_path: Path) -> None:
    r = check({"hotrefresh": json.loads(DASHBOARD_JSON.read_text())}, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr


BOGUS = {"dashboard": "refreshInterval", "panel": "datasourceUid", "target": "legend", "annotation": "expr"}


def test_a_key_grafana_does_not_know_is_rejected(installed: None, tmp_path: Path) -> None:
    """Copies of the dashboard with one bogus key each (an old-format annotation ``expr`` among
    them) do not compile, and tsc names each key in its copy."""
    copies = {}
    for where, key in BOGUS.items():
        board = copy.deepcopy(json.loads(DASHBOARD_JSON.read_text()))
        panel = next(p for p in board["panels"] if p["type"] != "row")
        holder = {
            "dashboard": board,
            "panel": panel,
            "target": panel["targets"][0],
            "annotation": board["annotations"]["list"][0],
        }[where]
        assert key not in holder
        holder[key] = "bogus"
        copies[where] = board
    r = check(copies, tmp_path)
    assert r.returncode != 0
    for where, key in BOGUS.items():
        errors = [line for line in r.stdout.splitlines() if f"{where}.ts(" in line]
        assert len(errors) == 1 and f"'\"{key}\"' does not exist in type" in errors[0], (where, r.stdout)
