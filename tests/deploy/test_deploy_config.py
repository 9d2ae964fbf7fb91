"""The deployment files are valid for the tools that will read them: promtool for the
Prometheus config and alert rules (including the rules' own unit tests), docker compose for
the compose file, Prometheus's parser for every dashboard query, and every metric they name
is one the code exports."""

from __future__ import annotations

import json
import os
import re
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
        "HotrefreshLiveNfrOverBound",
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


def _anchors(markdown: str) -> set[str]:
    """The anchors GitHub (and most Markdown renderers) give a document's headings."""
    out = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            out.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return out


def test_every_alert_has_a_runbook_section() -> None:
    """Each rule's runbook_url points at a section of docs/runbook.md that exists."""
    for rule in alert_rules():
        url = rule.get("annotations", {}).get("runbook_url", "")
        path, _, anchor = url.partition("#")
        assert path and anchor, f"{rule['alert']}: runbook_url {url!r} is not path#anchor"
        doc = REPO / path
        assert doc.is_file(), f"{rule['alert']}: {path} does not exist"
        assert anchor in _anchors(doc.read_text()), f"{rule['alert']}: no section #{anchor} in {path}"
        assert anchor == rule["alert"].lower()


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
        "Throttle",
        "Upgrade history",
        "Search latency p50 / p99",
        "Search requests by status",
        "Index log lag",
    ):
        assert wanted in titles

    # The data source is a variable (no uid hard-coded), of the provisioned data source's type,
    # defaulting to it; every panel, query, annotation and the upgrade variable go through it.
    variables = {v["name"]: v for v in board["templating"]["list"]}
    provisioned = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    datasource = provisioned["datasources"][0]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == datasource["type"]
    assert variables["datasource"]["current"]["value"] == datasource["uid"]
    ref = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["upgrade"]["datasource"] == ref
    assert variables["upgrade"]["includeAll"] and variables["upgrade"]["allValue"] == ".*"
    for annotation in board["annotations"]["list"]:
        assert annotation["datasource"] == ref and "expr" not in annotation and annotation["target"]["expr"]
    for p in board["panels"]:
        if p["type"] != "row":
            assert p["datasource"] == ref, p["title"]
            assert p["targets"], p["title"]
            assert all(t["datasource"] == ref for t in p["targets"]), p["title"]

    exprs = [e for _, e in dashboard_queries(variables=None)]
    per_upgrade = {g._name for g in metrics.upgrade_gauges()} | {"hotrefresh_backfill_items_total"}
    for expr in exprs:
        # ranges follow Grafana's step and scrape interval, never a fixed [1m] / [5m]
        assert set(re.findall(r"\[([^\]]+)\]", expr)) <= {"$__rate_interval", "$__range"}, expr
        for sel in selectors(expr):
            name = sel.split("{")[0]
            # a counter or histogram is read as a rate or an increase, never raw
            if name.endswith(("_total", "_bucket")):
                assert re.search(re.escape(sel) + r"\[", expr), f"{sel} is read raw in {expr}"
            # the upgrade variable selects the upgrades every per-upgrade series shows
            if name in per_upgrade:
                assert 'upgrade=~"$upgrade"' in sel, f"{sel} ignores $upgrade in {expr}"
    rendered = " ".join(e for _, e in dashboard_queries())
    assert "rate(hotrefresh_backfill_items_total" in rendered
    assert "histogram_quantile(0.99, sum by (le) (rate(hotrefresh_search_seconds_bucket" in rendered


# Metrics a panel shows that another branch of issue 27 adds to service/metrics.py (the backfill
# throttle, labelled `upgrade`): named here by their exact name until that branch is merged.
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


def _compose_config(
    env: dict[str, str], files: tuple[Path, ...] = (COMPOSE,), profiles: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    cmd = [*(_compose_cmd() or []), *(a for f in files for a in ("-f", str(f)))]
    cmd += [*(a for p in profiles for a in ("--profile", p)), "config"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env=env)


def _clean_env() -> dict[str, str]:
    prefixes = ("HOTREFRESH_", "POSTGRES_", "GRAFANA_", "MILVUS_")
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}


GRAFANA_SECRET = "grafana-s3cret-0123456789"


def _required_env() -> dict[str, str]:
    """A clean environment with the variables the default compose file requires."""
    return {**_clean_env(), "HOTREFRESH_ADMIN_TOKEN": "s3cret-token", "GRAFANA_ADMIN_PASSWORD": GRAFANA_SECRET}


@needs_compose
def test_compose_config_is_valid_and_ordered() -> None:
    r = _compose_config(_required_env())
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
@pytest.mark.parametrize("missing", ["HOTREFRESH_ADMIN_TOKEN", "GRAFANA_ADMIN_PASSWORD"])
def test_compose_refuses_to_start_without_an_admin_secret(missing: str) -> None:
    env = _required_env()
    del env[missing]
    r = _compose_config(env)
    assert r.returncode != 0
    assert missing in r.stderr


def _grafana_entrypoint(password: str) -> subprocess.CompletedProcess[str]:
    """Grafana's entrypoint as compose resolves it, run by /bin/sh with ``password``; the image's
    own /run.sh does not exist here, so getting as far as exec-ing it means the check passed."""
    r = _compose_config({**_required_env(), "GRAFANA_ADMIN_PASSWORD": password})
    assert r.returncode == 0, r.stderr
    grafana = yaml.safe_load(r.stdout)["services"]["grafana"]
    shell, flag, script, *args = grafana["entrypoint"]
    assert (shell, flag, args) == ("/bin/sh", "-c", ["/run.sh"])
    env = {"PATH": os.environ["PATH"], **grafana["environment"]}
    # `docker compose config` writes the file's `$$` escapes back out; the container's shell sees `$`
    return subprocess.run([shell, flag, script.replace("$$", "$"), *args], capture_output=True, text=True, env=env)


@needs_compose
@pytest.mark.parametrize("placeholder", ["admin", "changeme", "password", "short-pw"])
def test_grafana_refuses_a_placeholder_admin_password(placeholder: str) -> None:
    refused = _grafana_entrypoint(placeholder)
    assert refused.returncode == 78 and "GRAFANA_ADMIN_PASSWORD" in refused.stderr, refused
    started = _grafana_entrypoint(GRAFANA_SECRET)
    assert started.returncode != 78 and "/run.sh" in started.stderr, started  # went on to the image's entrypoint


@needs_compose
def test_prometheus_keeps_its_lifecycle_api_off_and_its_port_unpublished() -> None:
    services = _services((COMPOSE,), _required_env())
    prometheus = services["prometheus"]
    assert not [a for a in prometheus["command"] if a.startswith("--web.enable-lifecycle")]
    assert "--web.enable-admin-api" not in prometheus["command"]
    assert not prometheus.get("ports"), prometheus.get("ports")
    # Grafana reaches it by its service name on the compose network
    datasource = yaml.safe_load((DOCKER / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == GRAFANA_SECRET


# --- The Milvus profile (docker-compose.milvus.yml, docker-compose.milvus-gpu.yml) ----------------

MILVUS_COMPOSE = REPO / "docker-compose.milvus.yml"
MILVUS_GPU_COMPOSE = REPO / "docker-compose.milvus-gpu.yml"
MILVUS_FILES = (COMPOSE, MILVUS_COMPOSE)
MILVUS_GPU_FILES = (COMPOSE, MILVUS_COMPOSE, MILVUS_GPU_COMPOSE)
MINIO_USER, MINIO_SECRET = "hotrefresh-milvus", "minio-s3cret-0123456789"


def _milvus_env(**extra: str) -> dict[str, str]:
    return {
        **_required_env(),
        "MILVUS_MINIO_ACCESS_KEY": MINIO_USER,
        "MILVUS_MINIO_SECRET_KEY": MINIO_SECRET,
        **extra,
    }


def _services(files: tuple[Path, ...], env: dict[str, str] | None = None, profiles: tuple[str, ...] = ()) -> dict:
    r = _compose_config(env or _milvus_env(), files, profiles)
    assert r.returncode == 0, r.stderr
    return yaml.safe_load(r.stdout)["services"]


def _profiled(services: dict) -> dict[str, dict]:
    """The services only `--profile milvus` starts."""
    return {name: svc for name, svc in services.items() if svc.get("profiles")}


def _host_port(address: str) -> tuple[str | None, int | None]:
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    return parts.hostname, parts.port


@needs_compose
def test_milvus_profile_adds_etcd_minio_and_milvus_and_wires_api_and_workers() -> None:
    default = _services((COMPOSE,), _milvus_env())
    services = _services(MILVUS_FILES, profiles=("milvus",))
    milvus_stack = _profiled(services)
    assert set(milvus_stack) == {"etcd", "minio", "milvus"}
    assert all(svc["profiles"] == ["milvus"] for svc in milvus_stack.values())
    # the services of plain `docker compose up` are the same ones, with no profile
    assert set(services) - set(milvus_stack) == set(default)
    assert not _profiled(default)

    def cond(svc: str, dep: str) -> str:
        return services[svc]["depends_on"][dep]["condition"]

    # Milvus waits for its metadata and object stores, the API and the workers for Milvus
    milvus_env = services["milvus"]["environment"]
    assert _host_port(milvus_env["ETCD_ENDPOINTS"]) == ("etcd", 2379)
    assert _host_port(milvus_env["MINIO_ADDRESS"]) == ("minio", 9000)
    assert cond("milvus", "etcd") == cond("milvus", "minio") == "service_healthy"
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    # Milvus signs in to MinIO with MinIO's own root credentials, both from the variables
    minio_env = services["minio"]["environment"]
    assert (milvus_env["MINIO_ACCESS_KEY_ID"], milvus_env["MINIO_SECRET_ACCESS_KEY"]) == (MINIO_USER, MINIO_SECRET)
    assert (minio_env["MINIO_ROOT_USER"], minio_env["MINIO_ROOT_PASSWORD"]) == (MINIO_USER, MINIO_SECRET)

    for svc in ("api", "worker"):
        env = services[svc]["environment"]
        assert env["HOTREFRESH_INDEX_BACKEND"] == "milvus"
        host, port = _host_port(env["HOTREFRESH_MILVUS_URI"])
        assert host in milvus_stack and services[host]["image"].startswith("milvusdb/milvus:"), host
        assert port == 19530
        assert cond(svc, "milvus") == "service_healthy"
        # everything the default file gives them is still there
        assert {k: v for k, v in env.items() if k in default[svc]["environment"]} == {
            **default[svc]["environment"],
            "HOTREFRESH_INDEX_BACKEND": "milvus",
        }
        assert set(services[svc]["depends_on"]) == set(default[svc]["depends_on"]) | {"milvus"}


@needs_compose
def test_milvus_profile_images_are_pinned_and_documented() -> None:
    cpu = _profiled(_services(MILVUS_FILES, profiles=("milvus",)))
    gpu = _profiled(_services(MILVUS_GPU_FILES, profiles=("milvus",)))
    images = {name: svc["image"] for name, svc in cpu.items()}
    assert re.fullmatch(r"quay\.io/coreos/etcd:v3\.5\.\d+", images["etcd"]), images["etcd"]
    assert re.fullmatch(r"minio/minio:RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", images["minio"]), images["minio"]
    assert re.fullmatch(r"milvusdb/milvus:v2\.6\.\d+", images["milvus"]), images["milvus"]
    # the GPU variant is the same Milvus release, GPU build; etcd and MinIO do not change
    assert gpu["milvus"]["image"] == images["milvus"] + "-gpu"
    assert {n: s["image"] for n, s in gpu.items() if n != "milvus"} == {n: images[n] for n in ("etcd", "minio")}
    # docs/deploy.md names the versions that run
    docs = (REPO / "docs" / "deploy.md").read_text()
    for image in [*images.values(), gpu["milvus"]["image"]]:
        assert f"`{image}`" in docs, image


@needs_compose
def test_milvus_profile_has_healthchecks_and_publishes_no_store_port() -> None:
    for files in (MILVUS_FILES, MILVUS_GPU_FILES):
        r = _compose_config(_milvus_env(), files, ("milvus",))
        assert r.returncode == 0, r.stderr
        config = yaml.safe_load(r.stdout)
        services, volume_names = config["services"], set(config["volumes"])
        for name, svc in _profiled(services).items():
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
            assert not svc.get("healthcheck", {}).get("disable"), name
            # etcd and MinIO are reached on the compose network only; so is Milvus (no auth by default)
            assert not svc.get("ports"), f"{name} publishes {svc['ports']}"
            assert svc.get("network_mode") != "host", name
        # every service the profile adds keeps its data on a named volume
        for name in ("etcd", "minio", "milvus"):
            volumes = services[name]["volumes"]
            assert volumes and not _binds(services[name]), name
            named = [v["type"] == "volume" if isinstance(v, dict) else v.split(":")[0] in volume_names for v in volumes]
            assert all(named), (name, volumes)


@needs_compose
@pytest.mark.parametrize("missing", ["MILVUS_MINIO_ACCESS_KEY", "MILVUS_MINIO_SECRET_KEY"])
def test_milvus_profile_refuses_to_start_without_minio_credentials(missing: str) -> None:
    env = _milvus_env()
    del env[missing]
    r = _compose_config(env, MILVUS_FILES, ("milvus",))
    assert r.returncode != 0
    assert missing in r.stderr
    # ... and the default file does not ask for them
    assert _compose_config(env).returncode == 0


@needs_compose
def test_default_compose_is_untouched_by_the_milvus_profile() -> None:
    services = _services((COMPOSE,), _required_env())
    assert not {"etcd", "minio", "milvus"} & set(services)
    assert not _profiled(services)
    for svc in ("migrate", "api", "worker"):
        env = services[svc]["environment"]
        assert env["HOTREFRESH_INDEX_BACKEND"] == Settings.model_fields["index_backend"].default
        assert not [k for k in env if k.startswith("HOTREFRESH_MILVUS_")]
        assert "milvus" not in services[svc].get("depends_on", {})


@needs_compose
@pytest.mark.parametrize(("files", "gpu"), [(MILVUS_FILES, False), (MILVUS_GPU_FILES, True)], ids=["cpu", "gpu"])
def test_milvus_index_settings_are_ones_the_backend_accepts(files: tuple[Path, ...], gpu: bool) -> None:
    """The index the API and the workers ask for is one this Milvus image builds, with JSON
    parameters, and the whole client configuration passes the backend's own checks."""
    from service.index.milvus import CPU_INDEX_TYPES, GPU_INDEX_TYPES, MilvusConfig

    services = _services(files, profiles=("milvus",))
    api, worker = (services[svc]["environment"] for svc in ("api", "worker"))
    milvus_keys = {k: v for k, v in api.items() if k.startswith("HOTREFRESH_MILVUS_")}
    assert milvus_keys == {k: v for k, v in worker.items() if k.startswith("HOTREFRESH_MILVUS_")}
    env = api
    index_type = env["HOTREFRESH_MILVUS_INDEX_TYPE"]
    assert index_type in (GPU_INDEX_TYPES if gpu else CPU_INDEX_TYPES), index_type
    params = json.loads(env["HOTREFRESH_MILVUS_INDEX_PARAMS"])
    search = json.loads(env["HOTREFRESH_MILVUS_SEARCH_PARAMS"])
    assert isinstance(params, dict) and params and isinstance(search, dict) and search
    MilvusConfig(
        uri=env["HOTREFRESH_MILVUS_URI"],
        token=env["HOTREFRESH_MILVUS_TOKEN"],
        db_name=env["HOTREFRESH_MILVUS_DB"],
        prefix=env["HOTREFRESH_MILVUS_PREFIX"],
        index_type=index_type,
        index_params=params,
        search_params=search,
        consistency=env["HOTREFRESH_MILVUS_CONSISTENCY"],
    )
    milvus = services["milvus"]
    assert milvus["image"].endswith("-gpu") == gpu
    devices = milvus.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    assert bool(devices) == gpu
    if gpu:
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


@needs_compose
def test_milvus_index_env_file_can_be_replaced(tmp_path: Path) -> None:
    custom = tmp_path / "ivf.env"
    custom.write_text("HOTREFRESH_MILVUS_INDEX_TYPE=IVF_FLAT\nHOTREFRESH_MILVUS_INDEX_PARAMS='{\"nlist\":1024}'\n")
    for files in (MILVUS_FILES, MILVUS_GPU_FILES):
        services = _services(files, _milvus_env(MILVUS_INDEX_ENV_FILE=str(custom)), ("milvus",))
        for svc in ("api", "worker"):
            env = services[svc]["environment"]
            assert env["HOTREFRESH_MILVUS_INDEX_TYPE"] == "IVF_FLAT"
            assert json.loads(env["HOTREFRESH_MILVUS_INDEX_PARAMS"]) == {"nlist": 1024}


@needs_compose
def test_milvus_compose_variables_are_real_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every HOTREFRESH_* variable the Milvus override gives the API and the workers is a field of
    service/settings.py, and Settings reads the override's values as the backend's."""
    if "milvus_uri" not in Settings.model_fields:
        pytest.skip("service/settings.py does not declare the Milvus settings yet (HOTREFRESH_MILVUS_*)")
    fields = {f"HOTREFRESH_{name.upper()}" for name in Settings.model_fields}
    for files in (MILVUS_FILES, MILVUS_GPU_FILES):
        services = _services(files, profiles=("milvus",))
        for svc in ("api", "worker"):
            env = services[svc]["environment"]
            assert {k for k in env if k.startswith("HOTREFRESH_")} <= fields
            for key in list(os.environ):
                if key.startswith("HOTREFRESH_"):
                    monkeypatch.delenv(key)
            for key, value in env.items():
                if key.startswith("HOTREFRESH_"):
                    monkeypatch.setenv(key, str(value))
            settings = Settings()
            assert settings.index_backend == "milvus"
            assert settings.milvus_uri == env["HOTREFRESH_MILVUS_URI"]
            assert settings.milvus_index_type == env["HOTREFRESH_MILVUS_INDEX_TYPE"]
            assert settings.milvus_index_params == json.loads(env["HOTREFRESH_MILVUS_INDEX_PARAMS"])


def _legacy_compose_python() -> str | None:
    """The interpreter of Debian's docker-compose 1.x (a Python script), if that is installed."""
    legacy = shutil.which("docker-compose")
    if not legacy:
        return None
    with open(legacy, "rb") as f:
        first = f.readline()
    return first[2:].decode().strip() if first.startswith(b"#!") and b"python" in first else None


_START_SET = """
import json, sys
import docker.errors
from compose.config import config
from compose.config.environment import Environment
from compose.project import Project

class NoEngine:  # answers every Docker API call with "not found": nothing exists yet
    def __getattr__(self, name):
        def call(*args, **kwargs):
            raise docker.errors.NotFound(name)
        return call

details = config.find(".", sys.argv[2:], Environment.from_env_file("."))
project = Project.from_config("hr", config.load(details), NoEngine(), enabled_profiles=json.loads(sys.argv[1]))
try:
    print(json.dumps(sorted(s.name for s in project.get_services(include_deps=True))))
except Exception as e:
    print(json.dumps({"refused": str(e)}))
"""


@pytest.mark.skipif(_legacy_compose_python() is None, reason="Debian's docker-compose 1.x is not installed")
def test_docker_compose_v1_starts_milvus_only_with_the_profile() -> None:
    """What `docker-compose ... up` would start, computed by docker-compose 1.29 itself: the
    override with `--profile milvus` starts the Milvus stack with everything else, the override
    without the profile is refused (not silently started without Milvus), the default file alone
    starts what it always did."""

    def start_set(profiles: list[str], *files: Path) -> list[str] | dict:
        cmd = [_legacy_compose_python() or "python3", "-c", _START_SET, json.dumps(profiles), *map(str, files)]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=REPO, env=_milvus_env())
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    default = start_set([], COMPOSE)
    assert default == sorted(["postgres", "redis", "migrate", "api", "worker", "prometheus", "grafana"])
    assert start_set(["milvus"], COMPOSE) == default
    assert start_set(["milvus"], *MILVUS_FILES) == sorted([*default, "etcd", "minio", "milvus"])
    assert start_set(["milvus"], *MILVUS_GPU_FILES) == sorted([*default, "etcd", "minio", "milvus"])
    refused = start_set([], *MILVUS_FILES)
    assert isinstance(refused, dict) and "not enabled by the active profiles" in refused["refused"]


def test_images_install_the_milvus_extra() -> None:
    """Both images can run HOTREFRESH_INDEX_BACKEND=milvus: their `pip install` of the project
    names the `milvus` extra, which brings a pymilvus of the 2.6 line."""
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(re.fullmatch(r"pymilvus>=2\.6,<2\.7", dep) for dep in extras["milvus"]), extras["milvus"]
    for dockerfile in ("Dockerfile.api", "Dockerfile.worker"):
        installs = re.findall(r"pip install '?\.(?:\[([a-z0-9_,-]*)\])?'?", (DOCKER / dockerfile).read_text())
        assert installs, dockerfile
        assert all("milvus" in extra.split(",") for extra in installs), (dockerfile, installs)
