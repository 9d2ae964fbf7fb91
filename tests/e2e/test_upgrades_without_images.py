"""Issue 26 item 3, end to end through HTTP with a real Celery worker process: upgrades without
images (service/upgrade/mapping.py).

1. A third of the gallery's images are deleted from the image store before the upgrade: their
   items fail after ``HOTREFRESH_MAX_ATTEMPTS``, then get the ``transform`` plan's old->new map
   (fitted on every backfilled pair) at the end of the backfill. The upgrade completes with every
   item live on the new model, GET /upgrade counts them apart (and keeps their failures), GET
   /gallery says ``vector_source: mapped``, the worker's metrics count them, it commits, and a
   search with any deleted item's image (which the test kept) still finds it.
2. ``hotrefresh upgrade start --vector-only`` with every image deleted: no image is read, every
   item is mapped with the map the new model carries from its training, and found by its image.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from cli.launcher import System
from service.settings import Settings
from tests.utils.gallery import delete_images
from tests.utils.system import ADMIN, FAST_ENV, get_upgrade, ingest, logs_of, register, search, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 150
K = 25  # of 150: offline, the deepest mapped item of this gallery ranks 18th by its own image


def _install(settings: Settings, pair: tuple[Path, Path]) -> list[Path]:
    settings.models_path.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, settings.models_path / p.name)) for p in pair]


def _metric(url: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _found(api: str, images: np.ndarray, ext_ids: list[str]) -> list[str]:
    """The external ids NOT found in the top K by their own image."""
    return [
        e
        for img, e in zip(images, ext_ids, strict=True)
        if e not in [h["external_id"] for h in search(api, img, K)["results"]]
    ]


def _item(api: str, ext: str) -> dict:
    r = httpx.get(f"{api}/gallery/{ext}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_third_of_the_images_deleted_the_upgrade_completes_with_them_mapped_and_found(
    settings_env: Settings, trained_pair: tuple[Path, Path], fmnist_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, labels = fmnist_test[0][:N], fmnist_test[1][:N]
    paths = _install(settings_env, trained_pair)
    with System(tmp_path / "sys", env=dict(FAST_ENV)) as system:
        api = system.start_api(name="api")
        register(api.url, paths[0])
        new = register(api.url, paths[1])["name"]
        ext = ingest(api.url, images, labels)
        lost = list(range(0, N, 3))
        delete_images(settings_env, [ext[i] for i in lost])
        worker = system.start_worker(name="w1")
        logs = logs_of(api, worker)
        r = httpx.post(f"{api.url}/upgrade", json={"model": new, "batch_size": 8}, headers=ADMIN, timeout=30)
        assert r.status_code == 202, r.text
        uid = r.json()["id"]
        final = wait_for(
            lambda: (u := get_upgrade(api.url, uid))["state"] == "completed" and u, 240, "the upgrade to complete", logs
        )
        assert isinstance(final, dict)
        assert (final["done"], final["mapped"], final["failed"], final["fraction"]) == (
            N - len(lost),
            len(lost),
            0,
            1.0,
        )
        assert not final["vector_only"]
        assert sorted(f["external_id"] for f in final["failures"]) == sorted(ext[i] for i in lost)
        assert all(f["mapped"] and "ImageNotFound" in f["error"] for f in final["failures"])
        assert _metric(worker.url, "hotrefresh_backfill_items_total", upgrade=str(uid), status="mapped") == len(lost)
        # every item on the new model, in SQL and in the replica; the lost ones marked mapped
        for i in range(N):
            item = _item(api.url, ext[i])
            assert (item["model"], item["index_model"]) == (new, new), item
            assert item["vector_source"] == ("mapped" if i in lost else "encoded"), item
        assert _found(api.url, images[lost], [ext[i] for i in lost]) == []
        r = httpx.post(f"{api.url}/upgrade/{uid}/commit", headers=ADMIN, timeout=30)
        assert r.status_code == 200, r.text  # nothing left on the old model to strand
        wait_for(lambda: _item(api.url, ext[0])["index_model"] == new, 30, "the commit to reach the replica", logs)
        assert _found(api.url, images[lost], [ext[i] for i in lost]) == []
        assert httpx.get(f"{api.url}/models", timeout=10).json()["gallery_model"] == new


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_vector_only_upgrade_from_the_cli_with_every_image_deleted(
    settings_env: Settings, trained_pair: tuple[Path, Path], fmnist_test: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    images, labels = fmnist_test[0][:N], fmnist_test[1][:N]
    paths = _install(settings_env, trained_pair)
    with System(tmp_path / "sys", env=dict(FAST_ENV)) as system:
        api = system.start_api(name="api")
        old = register(api.url, paths[0])["name"]
        new = register(api.url, paths[1])["name"]
        ext = ingest(api.url, images, labels)
        delete_images(settings_env, ext)  # not one image left to read
        worker = system.start_worker(name="w1")
        logs = logs_of(api, worker)
        token = ADMIN["Authorization"].split()[1]
        cli = [sys.executable, "-m", "cli", "upgrade", "start", new, "--vector-only", "--no-watch"]
        done = subprocess.run([*cli, "--api", api.url, "--token", token], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        uid = get_upgrade(api.url)["id"]
        final = wait_for(
            lambda: (u := get_upgrade(api.url, uid))["state"] == "completed" and u, 240, "the upgrade to complete", logs
        )
        assert isinstance(final, dict)
        assert final["vector_only"] and final["from_model"] == old
        assert (final["done"], final["mapped"], final["failed"], final["failures"]) == (0, N, 0, [])
        assert final["nfr"] is None  # no image, no probe: unavailable, never 0
        assert all(_item(api.url, e)["vector_source"] == "mapped" for e in ext)
        assert _found(api.url, images, ext) == []
        assert "succeeded" in worker.log_tail(400)
