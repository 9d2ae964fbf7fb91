"""Issue 15, end to end through HTTP only, with encoders the project did not make: two TorchScript
modules scripted here from plain torch code (no hotrefresh checkpoint code), registered by path
with a sidecar and by upload with a metadata part; a gallery of colour JPEGs of assorted sizes;
a whole upgrade to the second by a real Celery worker process, committed. Every image then finds
itself first: the query (decoded by the API) and the gallery vector (decoded by the worker) went
through the same preprocessing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import pytest
from PIL import Image

from cli.launcher import System
from service.settings import Settings
from tests.utils.encoders import save_user_encoder
from tests.utils.system import ADMIN, FAST_ENV, get_upgrade, logs_of, register, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 48


def _jpegs(n: int) -> list[bytes]:
    """Colour photos of garments, each a different size and aspect ratio, as JPEG."""
    from models.data import colourize, load_fashion_mnist

    grey = load_fashion_mnist("test")[0][:n]
    out = []
    for k, a in enumerate(colourize(grey, 72, seed=3)):
        img = Image.fromarray(a.transpose(1, 2, 0)).resize((72 + 8 * (k % 5), 60 + 6 * (k % 3)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_torchscript_encoders_take_rgb_jpegs_through_a_whole_upgrade(settings_env: Settings, tmp_path: Path) -> None:
    root = settings_env.models_path
    save_user_encoder(root / "user-v1.pt", "user-v1", classes=None, size=40, seed=1)  # no head
    v2 = tmp_path / "upload" / "user-v2.pt"
    v2_meta = save_user_encoder(v2, "user-v2", classes=10, size=48, seed=2, compatible_with="user-v1", sidecar=False)
    headless = tmp_path / "upload" / "user-v2-headless.pt"
    save_user_encoder(headless, "user-v2-headless", classes=None, size=48, seed=3, sidecar=False)
    jpegs = _jpegs(N)
    with System(tmp_path / "sys", env=FAST_ENV) as system:
        api = system.start_api(name="api")
        first = register(api.url, root / "user-v1.pt")
        assert (first["format"], first["input_channels"], first["has_classifier"]) == ("torchscript", 3, False)

        def upload(path: Path, meta: dict) -> httpx.Response:
            files = {"file": (path.name, path.read_bytes()), "metadata": ("m.json", json.dumps(meta))}
            return httpx.post(f"{api.url}/models", files=files, headers=ADMIN, timeout=60)

        r = upload(v2, v2_meta)
        assert r.status_code == 201, r.text
        assert r.json()["has_classifier"] and r.json()["lineage"] == ["user-v2", "user-v1"]
        r = upload(headless, {**v2_meta, "name": "user-v2-headless", "classifier": None})
        assert r.status_code == 201, r.text

        for start in range(0, N, 16):
            files = [("image", (f"{k}.jpg", jpegs[k], "image/jpeg")) for k in range(start, start + 16)]
            data = {
                "external_id": [f"p{k}" for k in range(start, start + 16)],
                "label": [str(k % 10) for k in range(start, start + 16)],
            }
            r = httpx.post(f"{api.url}/gallery", files=files, data=data, headers=ADMIN, timeout=60)
            assert r.status_code == 201, r.text

        # a model without a head cannot score old vectors: the uncertainty orders are refused
        r = httpx.post(
            f"{api.url}/upgrade", json={"model": "user-v2-headless", "strategy": "margin"}, headers=ADMIN, timeout=30
        )
        assert r.status_code == 422 and "random" in r.json()["detail"], r.text

        worker = system.start_worker(name="w1")
        logs = logs_of(api, worker)
        r = httpx.post(
            f"{api.url}/upgrade",
            json={"model": "user-v2", "strategy": "margin", "batch_size": 8, "plan": "paper"},
            headers=ADMIN,
            timeout=30,
        )
        assert r.status_code == 202, r.text
        uid = r.json()["id"]
        final = wait_for(
            lambda: (u := get_upgrade(api.url, uid))["state"] == "completed" and u, 240, "the upgrade to complete", logs
        )
        assert final["done"] == N and final["failed"] == 0, final  # type: ignore[index]
        r = httpx.post(f"{api.url}/upgrade/{uid}/commit", headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text

        models = {m["name"]: m for m in httpx.get(f"{api.url}/models").json()["models"]}
        assert models["user-v2"]["is_gallery_model"] and models["user-v2"]["replaced"] == "user-v1"
        for k in range(0, N, 7):
            r = httpx.post(
                f"{api.url}/search", files={"image": ("q.jpg", jpegs[k], "image/jpeg")}, params={"k": 3}, timeout=30
            )
            assert r.status_code == 200, r.text
            top = r.json()["results"][0]
            assert (top["external_id"], top["model"]) == (f"p{k}", "user-v2"), r.json()
            assert top["score"] == pytest.approx(1.0, abs=1e-4)
