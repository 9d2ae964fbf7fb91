# The two commands of the README: `make demo` and `make test`. Both set everything up first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Real data, a real Prometheus for the monitoring test, redis-server for the demo's embedded
# Redis, docker-compose (v1) to validate the compose file without a Docker engine, and the
# PostgreSQL server's binaries: where nothing answers on HOTREFRESH_TEST_PG_ADMIN_URL (default
# 127.0.0.1:5432), the tests initdb a private cluster of their own (tests/conftest.py).
APT_PACKAGES := dataset-fashion-mnist prometheus redis-server docker-compose postgresql
# Debian puts initdb in /usr/lib/postgresql/<version>/bin, off the PATH.
HAVE_INITDB := command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
# node and npm for the dashboard's check against Grafana's schema (tests/deploy/grafana-schema),
# installed only when missing: a node from elsewhere (NodeSource's bundles npm) is left alone.
GRAFANA_SCHEMA := tests/deploy/grafana-schema

.PHONY: setup demo test lint bench experiment clean

$(STAMP): pyproject.toml
	@if [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v prometheus >/dev/null \
	    || ! command -v redis-server >/dev/null || ! command -v docker-compose >/dev/null || ! { $(HAVE_INITDB); }; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; fi
	@[ -x $(BIN)/python ] || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel on disk; never let a dependency pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

# @grafana/schema (pinned to the compose file's Grafana) and typescript, exactly as locked.
$(GRAFANA_SCHEMA)/node_modules/.package-lock.json: $(GRAFANA_SCHEMA)/package-lock.json
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; fi
	cd $(GRAFANA_SCHEMA) && npm ci --ignore-scripts --no-audit --no-fund

setup: $(STAMP) $(GRAFANA_SCHEMA)/node_modules/.package-lock.json

demo: setup
	$(BIN)/hotrefresh demo --exit

test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

# One at a time (2 cores): each writes its JSON under benchmarks/results/.
bench: setup
	for b in b1_backfill image_loading backfill_write vector_upsert b2_index_update b3_mixed_search b4_search_http b5_ordering train_throughput; do \
	  nice $(BIN)/python benchmarks/$$b.py || exit 1; done

experiment: setup
	$(BIN)/hotrefresh experiment --tune --allocation expansion --allocation open-data --allocation open-class \
	  --out benchmarks/results/experiment-tuned

clean:
	rm -rf var .pytest_cache $(GRAFANA_SCHEMA)/node_modules
