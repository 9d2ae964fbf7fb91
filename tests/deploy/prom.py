"""A real Prometheus server for tests: started from Debian's ``/usr/bin/prometheus`` with a
config derived from ``docker/prometheus.yml`` (same job names and rule files, so the
dashboard's and the alerts' ``job=...`` selectors mean the same thing), scraping local
targets every second, and thin helpers over its HTTP API.

The dashboard and the alert rules are only proven by running their PromQL against a
Prometheus that has scraped the real processes; no Grafana server runs on this machine kind.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from cli.launcher import free_port

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
PROMETHEUS_YML = DOCKER / "prometheus.yml"
ALERTS_YML = DOCKER / "alerts.yml"
DASHBOARD_JSON = DOCKER / "grafana" / "dashboards" / "hotrefresh.json"

# Metric names the alert rules select from; everything else in an expression is a function,
# keyword or label name. Used to check that each rule's underlying series exist.
_SELECTOR = re.compile(r"(?<![\w:])(up|ALERTS|hotrefresh_[a-z0-9_]+)\s*(\{[^}]*\})?")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    return shutil.which("promtool")


# What Grafana puts in place of the dashboard's variables, for Prometheus's own scrape interval of
# 15s (docker/prometheus.yml): every upgrade, $__rate_interval at its floor of four scrapes.
DASHBOARD_VARIABLES = {"upgrade": ".*", "__rate_interval": "1m", "__range": "1h", "__interval": "15s"}
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def render(expr: str, variables: Mapping[str, str] = DASHBOARD_VARIABLES) -> str:
    """A dashboard expression with its variables replaced, as Grafana sends it to Prometheus."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"{expr!r} uses ${name}, which is not one of {sorted(variables)}")
        return variables[name]

    return _VARIABLE.sub(value, expr)


def dashboard_queries(
    path: Path = DASHBOARD_JSON, variables: Mapping[str, str] | None = DASHBOARD_VARIABLES
) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, rows included; with the dashboard's
    variables replaced by ``variables`` (None: as written)."""
    board = json.loads(path.read_text())
    out: list[tuple[str, str]] = []

    def walk(panels: Sequence[Mapping[str, Any]]) -> None:
        for panel in panels:
            walk(panel.get("panels", []))
            for target in panel.get("targets", []):
                if target.get("expr"):
                    expr = target["expr"] if variables is None else render(target["expr"], variables)
                    out.append((f"{panel.get('title', '?')} [{target.get('refId', '?')}]", expr))

    walk(board.get("panels", []))
    return out


def alert_rules(path: Path = ALERTS_YML) -> list[dict[str, Any]]:
    """Every alerting rule of the rule file (recording rules left out)."""
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def selectors(expr: str) -> list[str]:
    """The metric selectors (name plus label matchers) an expression reads, in order, unique."""
    seen: dict[str, None] = {}
    for m in _SELECTOR.finditer(expr):
        seen.setdefault(m.group(1) + (m.group(2) or ""), None)
    return list(seen)


def local_config(
    targets: Mapping[str, Sequence[str]], *, rule_files: Sequence[Path] = (ALERTS_YML,), interval: str = "1s"
) -> dict[str, Any]:
    """docker/prometheus.yml with its service discovery replaced by ``targets`` per job
    (``host:port``), short intervals, and rule files by absolute path. Every job named in
    ``targets`` must exist in the deployment config, so the test scrapes what production
    scrapes under the same names."""
    base = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {job["job_name"]: job for job in base["scrape_configs"]}
    unknown = set(targets) - set(jobs)
    if unknown:
        raise ValueError(f"jobs {sorted(unknown)} are not in {PROMETHEUS_YML}: {sorted(jobs)}")
    scrape_configs = []
    for name, addrs in targets.items():
        job = {k: v for k, v in jobs[name].items() if not k.endswith("_sd_configs") and k != "static_configs"}
        job.update(scrape_interval=interval, scrape_timeout=interval, static_configs=[{"targets": list(addrs)}])
        scrape_configs.append(job)
    return {
        "global": {
            "scrape_interval": interval,
            "evaluation_interval": interval,
            "external_labels": base.get("global", {}).get("external_labels", {}),
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": scrape_configs,
    }


class PromError(RuntimeError):
    pass


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API."""

    url: str
    popen: subprocess.Popen
    log_path: Path

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def _api(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10.0)
        body = r.json()
        if body.get("status") != "success":
            raise PromError(f"{path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (raises PromError on a parse or evaluation error)."""
        data = self._api("query", {"query": expr})
        if data["resultType"] not in ("vector", "scalar"):
            raise PromError(f"{expr!r}: unexpected result type {data['resultType']}")
        return data["result"] if data["resultType"] == "vector" else [{"metric": {}, "value": data["result"]}]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        """Range query (what a Grafana panel draws); the result matrix."""
        data = self._api("query_range", {"query": expr, "start": start, "end": end, "step": step})
        if data["resultType"] != "matrix":
            raise PromError(f"{expr!r}: unexpected result type {data['resultType']}")
        return data["result"]

    def values(self, expr: str) -> dict[str, float]:
        """Instant query as {label set: value}."""
        return {json.dumps(s["metric"], sort_keys=True): float(s["value"][1]) for s in self.query(expr)}

    def targets(self) -> list[dict[str, Any]]:
        return self._api("targets", {"state": "active"})["activeTargets"]

    def rules(self) -> list[dict[str, Any]]:
        return [rule for group in self._api("rules")["groups"] for rule in group["rules"]]

    def wait_targets_up(self, expected: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Until ``expected`` targets have been scraped successfully."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            if sum(t["health"] == "up" for t in targets) >= expected:
                return targets
            time.sleep(0.25)
        summary = [(t["labels"].get("job"), t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets]
        raise TimeoutError(f"targets not up after {timeout:.0f}s: {summary}\n{self.log_tail()}")

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Until an instant query returns a non-empty result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr!r} returned no data after {timeout:.0f}s")
            time.sleep(0.25)

    def wait_rules_evaluated(self, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Until every loaded rule has been evaluated at least once."""
        deadline = time.monotonic() + timeout
        while True:
            rules = self.rules()
            if rules and all(r.get("health") in ("ok", "err") for r in rules):
                return rules
            if time.monotonic() > deadline:
                raise TimeoutError(f"rules not evaluated after {timeout:.0f}s: {rules}")
            time.sleep(0.25)


@contextlib.contextmanager
def run_prometheus(workdir: Path, config: Mapping[str, Any], *, timeout: float = 30.0) -> Iterator[Prometheus]:
    """Start Prometheus on a free loopback port with a temporary TSDB; always stopped on exit."""
    binary = prometheus_binary()
    if binary is None:
        raise RuntimeError("prometheus is not installed (Debian package 'prometheus')")
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log:
        popen = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    prom = Prometheus(f"http://127.0.0.1:{port}", popen, log_path)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if popen.poll() is not None:
                raise RuntimeError(f"prometheus exited with {popen.returncode}:\n{prom.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{prom.url}/-/ready", timeout=2.0).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready after {timeout:.0f}s:\n{prom.log_tail()}")
            time.sleep(0.2)
        yield prom
    finally:
        if popen.poll() is None:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait(timeout=10)


def dashboard_annotation_queries(
    path: Path = DASHBOARD_JSON, variables: Mapping[str, str] | None = DASHBOARD_VARIABLES
) -> list[tuple[str, str]]:
    """(annotation name, PromQL) of the dashboard's Prometheus annotations (alert markers), whose
    query is the annotation's ``target`` in Grafana's current format."""
    board = json.loads(path.read_text())
    annotations = board.get("annotations", {}).get("list", [])
    exprs = [(a.get("name", "?"), a.get("target", {}).get("expr")) for a in annotations]
    return [(name, e if variables is None else render(e, variables)) for name, e in exprs if e]
