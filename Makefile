# The front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
KAFKA_STAMP := .kafka/.installed
COUNT ?= 100000
RATE ?= 0

.DEFAULT_GOAL := help
.PHONY: kafka chromium help install demo test test-chaos test-unit test-integration test-e2e lint bench simulate migrate worker clean

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

# Apache Kafka's broker jars from Maven Central (needs Java 17 and Maven; a machine
# without a JVM skips this and the tests fall back to noida-db).
$(KAFKA_STAMP): devtools/kafka/pom.xml
	@if command -v java >/dev/null; then \
	  command -v mvn >/dev/null || { echo "Maven is needed to fetch Kafka's jars (Java is here)"; exit 1; }; \
	  rm -rf .kafka/libs; \
	  mvn -q -B -f devtools/kafka/pom.xml dependency:copy-dependencies \
	    -DoutputDirectory=$(CURDIR)/.kafka/libs -DincludeScope=runtime && \
	  echo "Kafka's jars are in .kafka/libs"; \
	else echo "no Java here: the local broker will be noida-db"; mkdir -p .kafka; fi
	touch $(KAFKA_STAMP)

kafka: $(KAFKA_STAMP) ## fetch Apache Kafka's broker jars into .kafka/libs (Maven)

# Headless Chromium for the dashboard's browser test (Debian packages; root or sudo).
chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver for the dashboard test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; }

install: $(STAMP) $(KAFKA_STAMP) $(NODE_STAMP) chromium ## create .venv, install the package with its dev tools, Kafka's jars, Azurite and Chromium

demo: $(STAMP) $(KAFKA_STAMP) ## broker + PostgreSQL + migrations + worker + simulator (COUNT=100000), then a summary; stops everything
	$(PY) -m devtools.demo --count $(COUNT) --rate $(RATE)

test: $(STAMP) $(KAFKA_STAMP) $(NODE_STAMP) chromium ## every test tier against the real broker (Kafka) and PostgreSQL (started and stopped by the tests)
	$(PY) -m pytest tests/unit tests/integration tests/e2e

test-chaos: $(STAMP) $(KAFKA_STAMP) ## the long fault runs: 10 SIGKILLs across 500,000 events, PostgreSQL down 60 s
	$(PY) -m pytest tests/chaos -s

test-unit: $(STAMP) ## unit tests only (no services)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP) $(KAFKA_STAMP) $(NODE_STAMP) ## integration tests (real broker, real PostgreSQL)
	$(PY) -m pytest tests/integration

test-e2e: $(STAMP) $(KAFKA_STAMP) chromium ## end-to-end tests (worker processes fed by the simulator)
	$(PY) -m pytest tests/e2e

lint: $(STAMP) ## ruff, mypy and the import contracts (.importlinter: layers, no cycles)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

bench: $(STAMP) $(KAFKA_STAMP) ## throughput and latency against a raw aiokafka consumer (prints figures)
	$(PY) -m benchmarks.pipeline

simulate: $(STAMP) ## send COUNT events to BROKER_URL at RATE events/s
	$(PY) -m simulator --count $(COUNT) --rate $(RATE)

migrate: $(STAMP) ## alembic upgrade head on DATABASE_URL
	$(VENV)/bin/alembic upgrade head

worker: $(STAMP) ## run a worker on BROKER_URL / DATABASE_URL (web UI on 6066)
	$(VENV)/bin/faust -A app worker -l info --web-port 6066

clean: ## remove the venv and local run data
	rm -rf $(VENV) node_modules .kafka .run data
