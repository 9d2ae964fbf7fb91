"""Gallery images on an S3-compatible object store (a real SeaweedFS the test owns), and that store
stopped mid-upgrade and started again with its data. Real API and Celery worker processes.

What must hold: an unreachable object store is an outage, not a bad image. The worker's batches
are not landed (no item is charged an attempt, none reaches the failure table), their leases
expire and they are redone once the store is back; the upgrade then completes, every item on the
new model exactly once. An upload meanwhile is answered 503 naming the object store, counted in
``hotrefresh_dependency_unavailable_total``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select

from cli.launcher import System
from service.db.migrate import upgrade_head
from service.db.schema import BackfillFailure
from service.db.session import read_scope
from tests.e2e.test_outages import N, _completes_after_the_outage, _outage_count, _settings, _upgrade_held_mid_way
from tests.utils.gallery import png
from tests.utils.servers import OwnSeaweed
from tests.utils.system import ADMIN, FAST_ENV

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _objects(server: OwnSeaweed, prefix: str) -> int:
    paginator = server.client().get_paginator("list_objects_v2")
    return sum(page.get("KeyCount", 0) for page in paginator.paginate(Bucket=server.bucket, Prefix=prefix + "/"))


def test_object_store_stopped_mid_upgrade_and_started_again(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_prefix: str,
    sqlite_url: str,
    seaweed_server: OwnSeaweed,
    trained_pair: tuple[Path, Path],
    fmnist_test: tuple[np.ndarray, np.ndarray],
) -> None:
    prefix = f"e2e-{uuid.uuid4().hex[:10]}"
    for k, v in seaweed_server.env(prefix).items():
        monkeypatch.setenv(k, v)
    settings = _settings(monkeypatch, tmp_path, sqlite_url, redis_prefix)
    assert settings.image_store == f"s3://{seaweed_server.bucket}/{prefix}"
    upgrade_head(settings.sqlalchemy_url)
    with System(tmp_path / "sys", env=dict(FAST_ENV)) as system:
        m = _upgrade_held_mid_way(system, settings, trained_pair, fmnist_test)
        api = m.api
        # The gallery's images went to the bucket, none to the local folder.
        assert _objects(seaweed_server, prefix) == len({png(a) for a in fmnist_test[0][:N]})
        assert not settings.images_path.exists() or not any(settings.images_path.rglob("*"))

        seaweed_server.kill()
        try:
            t0 = time.monotonic()
            r = httpx.post(
                f"{api.url}/gallery",
                files=[("image", ("x.png", png(fmnist_test[0][N]), "image/png"))],
                data={"external_id": ["during-outage"]},
                headers=ADMIN,
                timeout=60,
            )
            assert r.status_code == 503 and "object store unavailable" in r.json()["detail"], r.text
            assert r.headers.get("retry-after")
            # Longer than a lease: batches the workers leased when it went down expire meanwhile,
            # and every drain in that time finds the store down.
            while time.monotonic() - t0 < 3 * float(FAST_ENV["HOTREFRESH_LEASE_SECONDS"]):
                time.sleep(0.5)
            assert _outage_count(api.url, "object store") >= 1
            with read_scope(settings.sqlalchemy_url) as s:
                assert s.scalar(select(func.count()).select_from(BackfillFailure)) == 0
            assert "object store unavailable" in m.logs()  # the workers did meet the outage
        finally:
            seaweed_server.start()

        _completes_after_the_outage(m, settings)
        with read_scope(settings.sqlalchemy_url) as s:
            assert s.scalar(select(func.count()).select_from(BackfillFailure)) == 0
