"""`hotrefresh ingest` from a labeled folder into a real API process, and its refusals."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from cli.launcher import System
from cli.main import app
from service.settings import Settings
from tests.utils.env import ADMIN_TOKEN
from tests.utils.images import synthetic_png
from tests.utils.wait import wait_caught_up


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ingest_a_labeled_folder(service_settings: Settings, checkpoints: dict, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for cls in ("cats", "dogs"):
        (root / cls).mkdir(parents=True)
        for n in range(3):
            (root / cls / f"{n}.png").write_bytes(synthetic_png(10 * len(cls) + n))
    (root / "dogs" / "notes.txt").write_text("not an image, and not uploaded")
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with System(tmp_path / "system") as system:
        api = system.start_api()
        assert httpx.post(f"{api.url}/models", data={"path": "old.pt"}, headers=auth).status_code == 201
        run = subprocess.run(
            [sys.executable, "-m", "cli", "ingest", str(root), "--batch-size", "4", "--api", api.url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        assert "ingested 6 images" in run.stdout
        item = httpx.get(f"{api.url}/gallery/dogs/2.png").json()
        assert item["label"] == "dogs" and item["model"] == "old"
        # Again, with the old spelling of --api: every id is taken now, so the API refuses, the
        # command says why and exits 4 (refused), and that --url still works but is deprecated.
        again = subprocess.run(
            [sys.executable, "-m", "cli", "ingest", str(root), "--url", api.url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert again.returncode == 4 and "409" in again.stderr and "already" in again.stderr, again.stderr
        assert "--url is deprecated; use --api" in again.stderr and f"{api.url}/gallery" in again.stderr


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_ingest_colour_photos_into_a_colour_resnet(service_settings: Settings, tmp_path: Path) -> None:
    from tests.utils.checkpoints import make_tiny_checkpoint

    root = service_settings.models_path
    root.mkdir(parents=True, exist_ok=True)
    make_tiny_checkpoint(
        root / "rgb.pt",
        "rgb",
        arch="resnet18",
        input_channels=3,
        input_size=(48, 48),
        arch_options={"width": 4, "blocks": [1, 1, 1, 1], "stem": "small"},
    )
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with System(tmp_path / "system") as system:
        api = system.start_api()
        r = httpx.post(f"{api.url}/models", data={"path": "rgb.pt"}, headers=auth)
        assert r.status_code == 201 and r.json()["input_channels"] == 3, r.text
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "ingest",
                "--fashion-mnist",
                "--colour",
                "--limit",
                "20",
                "--offset",
                "5",
                "--batch-size",
                "8",
                "--api",
                api.url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        item = httpx.get(f"{api.url}/gallery/fmnist-test-00024").json()
        assert item["model"] == "rgb" and item["index_model"] == "rgb"
        assert httpx.get(f"{api.url}/gallery/fmnist-test-00025").status_code == 404
    stored = [p for p in service_settings.images_path.rglob("*") if p.is_file()]
    assert len(stored) == 20 and all(p.read_bytes()[:3] == b"\xff\xd8\xff" for p in stored)  # JPEG


@pytest.mark.parametrize(
    "args, env, words",
    [
        (["--fashion-mnist", "somewhere"], {"HOTREFRESH_ADMIN_TOKEN": "t"}, "either a FOLDER or --fashion-mnist"),
        ([], {"HOTREFRESH_ADMIN_TOKEN": "t"}, "either a FOLDER or --fashion-mnist"),
        (["--fashion-mnist"], {"HOTREFRESH_ADMIN_TOKEN": ""}, "no admin token"),
        (["somewhere", "--colour"], {"HOTREFRESH_ADMIN_TOKEN": "t"}, "go with --fashion-mnist"),
    ],
)
def test_ingest_refuses_bad_usage(args: list[str], env: dict, words: str) -> None:
    result = CliRunner().invoke(app, ["ingest", *args], env=env)
    assert result.exit_code == 2
    assert words in " ".join(result.output.split())


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_bulk_ingest_writes_straight_to_sql_and_a_running_api_sees_it(
    settings_env: Settings, checkpoints: dict, tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with System(tmp_path / "system") as system:
        api = system.start_api()
        assert httpx.post(f"{api.url}/models", data={"path": "old.pt"}, headers=auth).status_code == 201
        # 9,995 .. 10,014 of the test split twice over: the last five originals and the first fifteen copies
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli",
                "ingest",
                "--bulk",
                "--fashion-mnist",
                "--copies",
                "2",
                "--offset",
                "9995",
                "--limit",
                "20",
                "--batch-size",
                "8",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr
        assert "ingested 20 images" in run.stdout
        assert wait_caught_up(api.url, settings_env)["counts"] == {"old": 20}  # it applied the bulk loader's log
        for ext in ("fmnist-test-09999", "fmnist-test-00000-c1", "fmnist-test-00014-c1"):
            assert httpx.get(f"{api.url}/gallery/{ext}").json()["index_model"] == "old"
        assert httpx.get(f"{api.url}/gallery/fmnist-test-00015-c1").status_code == 404
        # bad input: one corrupt image refuses its batch with a clear error, and writes nothing of it
        root = tmp_path / "photos"
        (root / "cats").mkdir(parents=True)
        (root / "cats" / "good.png").write_bytes(synthetic_png(1))
        (root / "cats" / "bad.png").write_bytes(b"\\x89PNG\\r\\n\\x1a\\nbroken")
        bad = subprocess.run(
            [sys.executable, "-m", "cli", "ingest", "--bulk", str(root)], capture_output=True, text=True, timeout=180
        )
        assert bad.returncode == 1 and "422" in bad.stderr and "decod" in bad.stderr, bad.stderr
        assert httpx.get(f"{api.url}/gallery/cats/good.png").status_code == 404
        assert wait_caught_up(api.url, settings_env)["counts"] == {"old": 20}
