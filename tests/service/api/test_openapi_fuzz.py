"""Property-based fuzzing of the whole HTTP API from its own OpenAPI document (schemathesis),
against a real uvicorn process with a model and a gallery, on SQLite and on PostgreSQL (one input
rule for both: service.api.schemas.storable): no request, valid or not, with or
without the admin token, gets a 5xx, an undocumented status code, or a body that breaks the
declared schema."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from cli.launcher import System
from service.settings import Settings
from tests.utils.env import ADMIN_TOKEN
from tests.utils.images import synthetic_png

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_EXAMPLES = 12  # per operation and per auth variant: bounded, the suite runs on 2 shared cores


def _fuzz(operation: schemathesis.APIOperation, headers: dict[str, str]) -> None:
    @given(case=operation.as_strategy())
    @hyp_settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def fuzz(case: schemathesis.Case) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS)

    fuzz()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_no_5xx_and_no_schema_violation(
    service_settings: Settings, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with System(tmp_path / "system") as system:
        api = system.start_api(name="api")
        with httpx.Client(base_url=api.url, headers=auth, timeout=60) as c:
            assert c.post("/models", data={"path": "old.pt"}).status_code == 201
            files = [("image", (f"{j}.png", synthetic_png(j), "image/png")) for j in range(5)]
            r = c.post("/gallery", files=files, data={"external_id": [f"g{j}" for j in range(5)]})
            assert r.status_code == 201

        schema = schemathesis.openapi.from_url(f"{api.url}/openapi.json")
        tried = 0
        for result in schema.get_all_operations():
            operation = result.ok()
            for headers in (auth, {}, {"Authorization": "Bearer wrong"}):
                _fuzz(operation, headers)
                tried += 1
        assert tried >= 3 * 7  # every operation was fuzzed
        # Still serving, and nothing the fuzzer sent broke the index.
        assert httpx.get(f"{api.url}/readyz").status_code == 200
        log = api.log_tail(400)
        assert "unhandled error" not in log and "Traceback" not in log, log
