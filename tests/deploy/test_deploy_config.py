"""The deployment files are valid for the tools that will read them: promtool for the
Prometheus config and alert rules (including the rules' own unit tests), docker compose for
the compose file, Prometheus's parser for every dashboard query, and every metric they name
is one the code exports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from service import metrics
from service.settings import Settings
from tests.deploy.prom import (
    ALERTS_YML,
    DASHBOARD_JSON,
    DOCKER,
    PROMETHEUS_YML,
    REPO,
    alert_rules,
    dashboard_annotation_queries,
    dashboard_queries,
    promtool_binary,
    selectors,
)

COMPOSE = REPO / "docker-compose.yml"
needs_promtool = pytest.mark.skipif(promtool_binary() is None, reason="promtool not installed (Debian 'prometheus')")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [promtool_binary() or "promtool", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _exported_names() -> set[str]:
    """Every sample name service.metrics exposes (counters as _total, histograms as parts)."""
    names: set[str] = set()
    for obj in vars(metrics).values():
        kind = getattr(obj, "_type", None)
        name = getattr(obj, "_name", None)
        if kind is None or name is None or not name.startswith("hotrefresh_"):
            continue
        if kind == "counter":
            names.add(f"{name}_total")
        elif kind == "histogram":
            names.update(f"{name}_{part}" for part in ("bucket", "sum", "count"))
        else:
            names.add(name)
    return names


@needs_promtool
def test_promtool_check_config() -> None:
    r = _promtool("check", "config", str(PROMETHEUS_YML))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    r = _promtool("check", "rules", str(ALERTS_YML))
    assert r.returncode == 0, r.stdout + r.stderr
    assert {rule["alert"] for rule in alert_rules()} >= {
        "HotrefreshLiveNfrOverGuardrail",
        "HotrefreshBackfillStalled",
        "HotrefreshQueueNotShrinking",
        "HotrefreshWorkerDown",
        "HotrefreshIndexLogLagHigh",
    }


@needs_promtool
def test_alert_rules_fire_and_stay_quiet() -> None:
    """promtool's rule unit tests: each alert fires on trouble and not on a healthy upgrade."""
    r = _promtool("test", "rules", str(Path(__file__).with_name("alerts_test.yml")))
    assert r.returncode == 0, r.stdout + r.stderr


@needs_promtool
def test_every_dashboard_query_parses(tmp_path: Path) -> None:
    """Each query becomes a recording rule; promtool parses it with Prometheus's own parser."""
    exprs = [e for _, e in dashboard_queries()] + [e for _, e in dashboard_annotation_queries()]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [{"record": f"hotrefresh:dashboard_query:{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    r = _promtool("check", "rules", str(path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in r.stdout


def test_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD_JSON.read_text())
    assert board["uid"] == "hotrefresh"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = {p["title"] for p in board["panels"]}
    for wanted in (
        "Backfill progress",
        "Throughput",
        "ETA",
        "Queue depth",
        "Live NFR",
        "Live mAP",
        "Vectors per model",
        "Failures",
        "Search latency p50 / p99",
        "Search requests by status",
        "Index log lag",
    ):
        assert wanted in titles
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasource["datasources"][0]["uid"]
    for p in board["panels"]:
        if p["type"] != "row":
            assert p["datasource"]["uid"] == uid, p["title"]
            assert p["targets"], p["title"]
    exprs = " ".join(e for _, e in dashboard_queries())
    assert "rate(hotrefresh_backfill_items_total" in exprs
    assert "histogram_quantile(0.99, sum by (le) (rate(hotrefresh_search_seconds_bucket" in exprs


def test_dashboard_and_alerts_name_only_exported_metrics() -> None:
    """A typo in a metric name would show 'No data' forever; catch it without a server."""
    exported = _exported_names() | {"up", "ALERTS"}
    exprs = [e for _, e in dashboard_queries()] + [r["expr"] for r in alert_rules()]
    used = {s.split("{")[0] for e in exprs for s in selectors(e)}
    assert used <= exported, sorted(used - exported)
    # the panels and rules cover every metric the service exports (docs/design.md)
    assert {n for n in exported if n.startswith("hotrefresh_") and not n.endswith(("_sum", "_count"))} <= used


def _compose_cmd() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


needs_compose = pytest.mark.skipif(
    _compose_cmd() is None,
    reason="neither `docker compose` nor `docker-compose` (Debian 'docker-compose') is installed",
)


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [*(_compose_cmd() or []), "-f", str(COMPOSE), "config"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("HOTREFRESH_", "POSTGRES_", "GRAFANA_"))}


@needs_compose
def test_compose_config_is_valid_and_ordered() -> None:
    r = _compose_config({**_clean_env(), "HOTREFRESH_ADMIN_TOKEN": "s3cret-token"})
    assert r.returncode == 0, r.stderr
    services = yaml.safe_load(r.stdout)["services"]
    assert set(services) == {"redis", "postgres", "migrate", "api", "worker", "prometheus", "grafana"}

    def cond(svc: str, dep: str) -> str:
        return services[svc]["depends_on"][dep]["condition"]

    assert services["migrate"]["command"] == ["alembic", "upgrade", "head"]
    assert cond("migrate", "postgres") == "service_healthy"
    for svc in ("api", "worker"):
        assert cond(svc, "migrate") == "service_completed_successfully"
        assert cond(svc, "redis") == "service_healthy"
    assert cond("api", "postgres") == "service_healthy"
    assert cond("prometheus", "api") == "service_healthy"
    assert cond("grafana", "prometheus") == "service_healthy"
    for svc in ("redis", "postgres", "api", "worker", "prometheus", "grafana"):
        assert services[svc].get("healthcheck", {}).get("test"), f"{svc} has no healthcheck"
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]

    # every HOTREFRESH_* variable the compose file sets is a real setting
    fields = {f"HOTREFRESH_{name.upper()}" for name in Settings.model_fields}
    for svc in ("migrate", "api", "worker"):
        env = services[svc]["environment"]
        assert env["HOTREFRESH_ADMIN_TOKEN"] == "s3cret-token"
        assert {k for k in env if k.startswith("HOTREFRESH_")} <= fields

    # Prometheus and Grafana see the files this repository tests, where their configs look
    mounts = {target: source for svc in ("prometheus", "grafana") for source, target in _binds(services[svc])}
    provider = yaml.safe_load((DOCKER / "grafana/provisioning/dashboards/hotrefresh.yml").read_text())
    assert mounts == {
        "/etc/prometheus/prometheus.yml": str(PROMETHEUS_YML),
        "/etc/prometheus/alerts.yml": str(ALERTS_YML),
        "/etc/grafana/provisioning": str(DOCKER / "grafana/provisioning"),
        provider["providers"][0]["options"]["path"]: str(DASHBOARD_JSON.parent),
    }
    assert yaml.safe_load(PROMETHEUS_YML.read_text())["rule_files"] == ["alerts.yml"]


def _binds(service: dict) -> list[tuple[str, str]]:
    """(host path, container path) of a service's bind mounts, in either compose's output form."""
    out = []
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            if v.get("type") == "bind":
                out.append((v["source"], v["target"]))
        elif str(v).startswith("/"):
            source, target = str(v).split(":")[:2]
            out.append((source, target))
    return out


@needs_compose
def test_compose_refuses_to_start_without_an_admin_token() -> None:
    r = _compose_config(_clean_env())
    assert r.returncode != 0
    assert "HOTREFRESH_ADMIN_TOKEN" in r.stderr
