"""``hotrefresh upgrade ...`` against a real API process (real SQL and Redis): the history page by
page and by state, one upgrade's status as the list shows it, start and the actions, and the
API's refusals as exit code 4 with its status and detail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.client import EXIT_REFUSED
from cli.launcher import System
from cli.main import app
from tests.utils.upgrade import make_history

pytestmark = pytest.mark.integration
runner = CliRunner(env={"COLUMNS": "400"})


def cli(api: str, *args: str) -> tuple[int, str]:
    r = runner.invoke(app, [*args, "--api", api])
    return r.exit_code, r.output


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_list_status_start_and_actions_through_the_api(make_gallery, tmp_path: Path) -> None:
    g = make_gallery(n=24)
    _ctx, ids = make_history(g)
    newest_first = sorted(ids.values(), reverse=True)
    with System(tmp_path / "system") as system:
        api = system.start_api().url

        code, out = cli(api, "upgrade", "list", "--json")
        assert code == 0, out
        page = json.loads(out)
        assert [u["id"] for u in page["items"]] == newest_first and page["next"] is None
        code, out = cli(api, "upgrade", "list", "--limit", "3", "--json")
        first = json.loads(out)
        assert [u["id"] for u in first["items"]] == newest_first[:3] and first["next"] == newest_first[2]
        code, out = cli(api, "upgrade", "list", "--limit", "3", "--before", str(first["next"]), "--json")
        assert [u["id"] for u in json.loads(out)["items"]] == newest_first[3:]
        for state, uid in ids.items():
            code, out = cli(api, "upgrade", "list", "--state", state, "--json")
            assert code == 0 and [u["id"] for u in json.loads(out)["items"]] == [uid], (state, out)

        # The table: one row per upgrade, and the cursor of the next page when there is one.
        code, out = cli(api, "upgrade", "list", "--limit", "2")
        assert code == 0, out
        rows = [line for line in out.splitlines() if line.strip(" │┃").split(" ")[0].isdigit()]
        assert [int(r.strip(" │┃").split(" ")[0]) for r in rows] == newest_first[:2], out
        assert f"--before {newest_first[1]}" in out and "running" in out

        # status: the same view as the list's
        committed = next(u for u in page["items"] if u["id"] == ids["committed"])
        code, out = cli(api, "upgrade", "status", str(ids["committed"]), "--json")
        assert code == 0 and json.loads(out) == committed
        code, out = cli(api, "upgrade", "status", str(ids["committed"]))
        assert code == 0 and "committed" in out and "24/24" in out, out
        code, out = cli(api, "upgrade", "watch", str(ids["committed"]), "--json")  # finished: one line, then done
        assert code == 0 and [json.loads(line)["state"] for line in out.splitlines()] == ["committed"]

        # a refusal: the API's status and detail, exit 4
        code, out = cli(api, "upgrade", "status", "999")
        assert code == EXIT_REFUSED and "404" in out and "upgrade 999 not found" in out and api in out, out
        code, out = cli(api, "upgrade", "start", g.new, "--no-watch")
        assert code == EXIT_REFUSED and "409" in out and f"upgrade {ids['running']} is running" in out, out

        code, out = cli(api, "upgrade", "pause", str(ids["running"]), "--json")
        assert code == 0 and json.loads(out) == {"id": ids["running"], "state": "paused"}
        code, out = cli(api, "upgrade", "pause", str(ids["running"]))
        assert code == EXIT_REFUSED and "409" in out and "cannot pause" in out, out
        code, out = cli(api, "upgrade", "resume", str(ids["running"]))
        assert code == 0 and f"upgrade {ids['running']}: running" in out
        code, out = cli(api, "upgrade", "cancel", str(ids["running"]))
        assert code == 0 and f"upgrade {ids['running']}: cancelled" in out

        # start with the options the API takes; the answer as JSON
        code, out = cli(
            api, "upgrade", "start", g.old, "--plan", "dual", "--strategy", "random", "--no-watch", "--json"
        )
        assert code == 0, out
        started = json.loads(out)
        assert started["state"] == "scoring" and started["total"] == 24
        code, out = cli(api, "upgrade", "status", "--json")  # the latest
        latest = json.loads(out)
        assert (latest["id"], latest["plan"], latest["strategy"]) == (started["id"], "dual", "random")
        code, out = cli(api, "upgrade", "rollback", str(started["id"]))
        assert code == 0 and "rolled_back" in out
        code, out = cli(api, "upgrade", "list", "--state", "rolled_back", "--json")
        assert [u["id"] for u in json.loads(out)["items"]] == [started["id"], ids["rolled_back"]]
