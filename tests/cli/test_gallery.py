"""``hotrefresh gallery add | get | delete`` and ``hotrefresh search`` against a real API process:
items added with ids and labels, read back, found, deleted; ids with a slash; usage errors
before any request; the API's refusals as exit 4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.client import EXIT_REFUSED, EXIT_USAGE
from cli.launcher import System
from cli.main import app
from service.settings import Settings
from tests.utils.images import synthetic_png

pytestmark = pytest.mark.integration
runner = CliRunner(env={"COLUMNS": "400"})


def cli(api: str, *args: str) -> tuple[int, str]:
    r = runner.invoke(app, [*args, "--api", api])
    return r.exit_code, r.output


def images(root: Path, n: int) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        (root / f"{k}.png").write_bytes(synthetic_png(k))
        paths.append(str(root / f"{k}.png"))
    return paths


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_add_get_delete_and_search(service_settings: Settings, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    a, b, c = images(tmp_path / "img", 3)
    with System(tmp_path / "system") as system:
        api = system.start_api().url
        assert cli(api, "models", "register", "--path", "old.pt")[0] == 0

        code, out = cli(
            api,
            "gallery",
            "add",
            a,
            b,
            "--id",
            "cats/1",
            "--id",
            "dogs/1",
            "--label",
            "cat",
            "--label",
            "dog",
            "--json",
        )
        assert code == 0, out
        assert [i["external_id"] for i in json.loads(out)["items"]] == ["cats/1", "dogs/1"]
        code, out = cli(api, "gallery", "add", c, "--label", "bird")  # the id: the file's name
        assert code == 0 and "added 2.png" in out, out

        code, out = cli(api, "gallery", "get", "dogs/1", "--json")
        assert code == 0, out
        item = json.loads(out)
        assert (item["external_id"], item["label"], item["model"], item["index_model"]) == (
            "dogs/1",
            "dog",
            "old",
            "old",
        )
        code, out = cli(api, "gallery", "get", "2.png")
        assert code == 0 and "label bird" in out and "model old" in out, out

        # search: the query image finds its own item first
        code, out = cli(api, "search", b, "--k", "2", "--json")
        assert code == 0, out
        found = json.loads(out)
        assert found["query_model"] == "old" and len(found["results"]) == 2
        assert found["results"][0]["external_id"] == "dogs/1"
        code, out = cli(api, "search", a, "-k", "3")
        rows = [line for line in out.splitlines() if line.strip(" │┃").split(" ")[0].isdigit()]
        assert code == 0 and len(rows) == 3 and "cats/1" in rows[0], out

        # usage errors: nothing sent
        code, out = cli(api, "gallery", "add", a, b, "--id", "only-one")
        assert code == EXIT_USAGE and "2 images but 1 --id" in out, out
        code, out = cli(api, "gallery", "add", a, b, c, "--label", "x", "--label", "y")
        assert code == EXIT_USAGE and "--label" in out, out
        # refusals: exit 4, nothing changed
        code, out = cli(api, "gallery", "add", a, "--id", "cats/1")
        assert code == EXIT_REFUSED and "409" in out, out

        code, out = cli(api, "gallery", "delete", "cats/1")
        assert code == 0 and "deleted cats/1" in out
        code, out = cli(api, "gallery", "get", "cats/1")
        assert code == EXIT_REFUSED and "404" in out and "cats/1" in out, out
        code, out = cli(api, "gallery", "delete", "cats/1")
        assert code == EXIT_REFUSED and "404" in out
        code, out = cli(api, "search", a, "--k", "10", "--json")
        assert sorted(r["external_id"] for r in json.loads(out)["results"]) == ["2.png", "dogs/1"]
