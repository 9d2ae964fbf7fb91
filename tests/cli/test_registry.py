"""``hotrefresh models list | register`` against a real API process: a model in the model
directory and one uploaded from this machine, the list as a table and as JSON, and the
refusals (a usage error before any request; the API's 409 as exit 4)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.client import EXIT_REFUSED, EXIT_USAGE
from cli.launcher import System
from cli.main import app
from service.settings import Settings

pytestmark = pytest.mark.integration
runner = CliRunner(env={"COLUMNS": "400"})


def cli(api: str, *args: str) -> tuple[int, str]:
    r = runner.invoke(app, [*args, "--api", api])
    return r.exit_code, r.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_register_by_path_and_by_upload_then_list(
    service_settings: Settings, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "mine" / "new.pt"  # not in the model directory: only an upload reaches it
    elsewhere.parent.mkdir()
    shutil.copy2(checkpoints["new"], elsewhere)
    with System(tmp_path / "system") as system:
        api = system.start_api().url
        code, out = cli(api, "models", "list", "--json")
        assert code == 0 and json.loads(out)["models"] == []
        code, out = cli(api, "models", "register", "--path", "old.pt")
        assert code == 0 and "registered old" in out, out
        code, out = cli(api, "models", "register", "--file", str(elsewhere), "--json")
        assert code == 0, out
        assert json.loads(out)["name"] == "new" and json.loads(out)["compatible_with"] == "old"

        code, out = cli(api, "models", "list", "--json")
        doc = json.loads(out)
        assert [m["name"] for m in doc["models"]] == ["old", "new"]
        assert (doc["gallery_model"], doc["query_model"]) == ("old", "old")
        code, out = cli(api, "models", "list")
        assert code == 0
        line = next(x for x in out.splitlines() if " old " in x)
        assert "gallery, query" in line

        code, out = cli(api, "models", "register", "--path", "old.pt")
        assert code == EXIT_REFUSED and "409" in out, out
        for args in (
            ["--path", "old.pt", "--file", str(elsewhere)],
            [],
            ["--path", "old.pt", "--metadata", str(elsewhere)],
        ):
            code, out = cli(api, "models", "register", *args)
            assert code == EXIT_USAGE, (args, out)
        code, out = cli(api, "models", "list", "--json")
        assert len(json.loads(out)["models"]) == 2  # nothing else registered
