# The front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
COUNT ?= 100000
RATE ?= 0

.DEFAULT_GOAL := help
.PHONY: chromium help install demo test test-unit test-integration test-e2e lint bench simulate migrate worker clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Azurite (the Azure Blob Storage emulator) for the tests of the abfs:// lake path.
$(NODE_STAMP): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node.js 20) is needed for Azurite, the Azure Blob emulator the tests use"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

# Headless Chromium for the dashboard's browser test (Debian packages; root or sudo).
chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver for the dashboard test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; }

install: $(STAMP) $(NODE_STAMP) chromium ## create .venv, install the package with its dev tools, Azurite and Chromium

demo: $(STAMP) ## broker + PostgreSQL + migrations + worker + simulator (COUNT=100000), then a summary; stops everything
	$(PY) -m devtools.demo --count $(COUNT) --rate $(RATE)

test: $(STAMP) $(NODE_STAMP) chromium ## every test tier against the real broker and PostgreSQL (started and stopped by the tests)
	$(PY) -m pytest tests

test-unit: $(STAMP) ## unit tests only (no services)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP) $(NODE_STAMP) ## integration tests (real broker, real PostgreSQL)
	$(PY) -m pytest tests/integration

test-e2e: $(STAMP) chromium ## end-to-end tests (worker processes fed by the simulator)
	$(PY) -m pytest tests/e2e

lint: $(STAMP) ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

bench: $(STAMP) ## throughput and latency against a raw aiokafka consumer (prints figures)
	$(PY) -m benchmarks.pipeline

simulate: $(STAMP) ## send COUNT events to BROKER_URL at RATE events/s
	$(PY) -m simulator --count $(COUNT) --rate $(RATE)

migrate: $(STAMP) ## alembic upgrade head on DATABASE_URL
	$(VENV)/bin/alembic upgrade head

worker: $(STAMP) ## run a worker on BROKER_URL / DATABASE_URL (web UI on 6066)
	$(VENV)/bin/faust -A app worker -l info --web-port 6066

clean: ## remove the venv and local run data
	rm -rf $(VENV) node_modules .run data
