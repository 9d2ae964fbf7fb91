"""Every route is counted and timed in /metrics, labelled by its route template (never the raw
path, so ids do not become series), method and status class; a request the admission middleware
refuses is counted too, and the /search metrics the dashboard reads are still there."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.utils.images import synthetic_png

pytestmark = pytest.mark.integration


def _samples(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _count(samples: dict, route: str, method: str, status: str) -> float:
    key = ("hotrefresh_http_requests_total", (("method", method), ("route", route), ("status", status)))
    return samples.get(key, 0.0)


def _timed(samples: dict, route: str, method: str) -> float:
    return samples.get(("hotrefresh_http_request_seconds_count", (("method", method), ("route", route))), 0.0)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_routes_show_up_by_template_method_and_status_class(client: TestClient) -> None:
    before = _samples(client)
    assert client.get("/healthz").status_code == 200
    for item in ("no-such-item-1", "no-such-item-2", "no-such-item-3"):
        assert client.get(f"/gallery/{item}").status_code == 404
    assert client.post("/upgrade/7/pause").status_code == 401  # refused by Admission, before any route
    assert client.get("/models").status_code == 200
    query = {"image": ("q.png", synthetic_png(1), "image/png")}
    assert client.post("/search", files=query).status_code == 409  # no model registered yet
    assert client.get("/nowhere/at/all").status_code == 404
    after = _samples(client)

    def added(route: str, method: str, status: str) -> float:
        return _count(after, route, method, status) - _count(before, route, method, status)

    assert added("/healthz", "GET", "2xx") == 1
    assert added("/gallery/{external_id}", "GET", "4xx") == 3
    assert added("/upgrade/{upgrade_id}/pause", "POST", "4xx") == 1
    assert added("/models", "GET", "2xx") == 1
    assert added("/search", "POST", "4xx") == 1
    assert added("unmatched", "GET", "4xx") == 1
    assert _timed(after, "/gallery/{external_id}", "GET") - _timed(before, "/gallery/{external_id}", "GET") == 3
    # no label value is a raw path: the ids never became series
    labels = {v for (_, pairs) in after for _, v in pairs}
    assert not {"/gallery/no-such-item-1", "/upgrade/7/pause", "/nowhere/at/all"} & labels
    # the /search metrics of the dashboard and docs/deploy.md are still written
    search = ("hotrefresh_search_requests_total", (("status", "409"),))
    assert after[search] - before.get(search, 0.0) == 1
