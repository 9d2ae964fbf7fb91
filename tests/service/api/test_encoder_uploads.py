"""``POST /models`` with TorchScript from outside (issue 23): a hostile archive is refused and
the host file it aims at stays untouched; a taken name is refused before anything is loaded; a
forward that runs too long is a 422 at the configured limit; what is registered is the vetted
archive. The app in-process with its real lifespan, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.utils.encoders import save_user_encoder
from tests.utils.hostile_encoders import MARKER, OverwritesOnLoad, Slow, doc, save
from tests.utils.wait import wait_ready

pytestmark = pytest.mark.integration
CHECK_SECONDS = 10


@pytest.fixture
def quick_client(service_settings: Settings) -> Iterator[TestClient]:
    """The app with a short validation time limit."""
    from service.api.app import create_app

    settings = service_settings.model_copy(update={"model_check_seconds": CHECK_SECONDS})
    with TestClient(create_app(settings)) as c:
        wait_ready(c)
        yield c


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "marker.bin"
    path.parent.mkdir()
    path.write_bytes(MARKER)
    return path


def upload(client: TestClient, headers: dict, archive: Path, metadata: dict):
    files = {"file": (archive.name, archive.read_bytes()), "metadata": ("m.json", json.dumps(metadata).encode())}
    return client.post("/models", files=files, headers=headers)


def models(client: TestClient) -> list[str]:
    return [m["name"] for m in client.get("/models").json()["models"]]


def test_a_hostile_upload_is_refused_and_the_host_file_untouched(
    quick_client: TestClient, admin_headers: dict, service_settings: Settings, marker: Path, tmp_path: Path
) -> None:
    archive = save(OverwritesOnLoad(str(marker)), tmp_path / "evil.pt")
    r = upload(quick_client, admin_headers, archive, doc("evil"))
    assert r.status_code == 422, r.text
    assert marker.read_bytes() == MARKER
    assert " at 0x" not in r.json()["detail"]
    assert models(quick_client) == []
    assert not any((service_settings.models_path / ".incoming").iterdir())


def test_a_taken_name_is_refused_before_the_archive_is_loaded(
    quick_client: TestClient, admin_headers: dict, service_settings: Settings, marker: Path, tmp_path: Path
) -> None:
    meta = save_user_encoder(tmp_path / "u.pt", "u", dim=16, sidecar=False)
    r = upload(quick_client, admin_headers, tmp_path / "u.pt", meta)
    assert r.status_code == 201, r.text
    stored = list(service_settings.models_path.glob("u-*.pt"))
    assert len(stored) == 1  # the vetted archive: one frozen forward, no code of the uploader's
    assert torch.jit.load(str(stored[0]))._c._method_names() == ["forward"]
    names = zipfile.ZipFile(stored[0]).namelist()
    assert not any("UserEncoder" in n for n in names)
    archive = save(OverwritesOnLoad(str(marker)), tmp_path / "evil.pt")
    r = upload(quick_client, admin_headers, archive, {**doc("u")})
    assert r.status_code == 409, r.text
    assert marker.read_bytes() == MARKER
    assert models(quick_client) == ["u"]


def test_a_forward_that_runs_too_long_is_a_422_at_the_configured_limit(
    quick_client: TestClient, admin_headers: dict, tmp_path: Path
) -> None:
    archive = save(Slow(), tmp_path / "slow.pt")
    r = upload(quick_client, admin_headers, archive, doc("slow"))
    assert r.status_code == 422, r.text
    assert f"did not finish within {CHECK_SECONDS} s (HOTREFRESH_MODEL_CHECK_SECONDS)" in r.json()["detail"]
    assert models(quick_client) == []
