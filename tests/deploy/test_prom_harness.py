"""The Prometheus harness itself, against a tiny local metrics endpoint: a real Prometheus
starts from the deployment config, scrapes two local targets under the production job
names, and answers queries. Proves the harness (and the query helpers the live test relies
on) without the rest of the system; the live test is test_prometheus_live.py."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.deploy.prom import PromError, local_config, prometheus_binary, run_prometheus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(prometheus_binary() is None, reason="prometheus not installed (Debian 'prometheus')"),
]


def _exposition(scrape: int) -> bytes:
    """Samples shaped like the service's, with the counter growing each scrape."""
    return (
        "# TYPE hotrefresh_backfill_items_total counter\n"
        f'hotrefresh_backfill_items_total{{upgrade="1",status="done"}} {10 * scrape}\n'
        "# TYPE hotrefresh_backfill_queue_depth gauge\n"
        f'hotrefresh_backfill_queue_depth{{upgrade="1"}} {max(0, 1000 - 10 * scrape)}\n'
    ).encode()


@pytest.fixture
def endpoint() -> Iterator[str]:
    counter = itertools.count(1)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = _exposition(next(counter)) if self.path == "/metrics" else b""
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_harness_scrapes_queries_and_evaluates_rules(tmp_path: Path, endpoint: str) -> None:
    config = local_config({"hotrefresh-worker": [endpoint]})
    with pytest.raises(ValueError, match="not in"):
        local_config({"no-such-job": [endpoint]})
    with run_prometheus(tmp_path / "prom", config) as prom:
        targets = prom.wait_targets_up(1)
        assert [t["labels"]["job"] for t in targets] == ["hotrefresh-worker"]
        done = 'hotrefresh_backfill_items_total{status="done"}'
        rate = prom.wait_for(f"sum by (upgrade) (rate({done}[1m])) > 0")
        assert rate[0]["metric"] == {"upgrade": "1"}
        assert prom.query("hotrefresh_no_such_metric") == []
        with pytest.raises(PromError, match="parse"):
            prom.query("sum by (upgrade (")
        rules = prom.wait_rules_evaluated()
        assert {r["name"] for r in rules} >= {"HotrefreshWorkerDown", "HotrefreshBackfillStalled"}
        assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    assert prom.popen.poll() is not None, "prometheus must be stopped on exit"
