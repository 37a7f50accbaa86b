# The front door. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NODE_STAMP := node_modules/.installed
KAFKA_STAMP := .kafka/.installed
# The deployment checkers that are not Python packages of ours: Helm, actionlint and
# Prometheus's promtool built with Go from the Go module proxy, checkov in a venv of its
# own (its pins clash with ours). The versions are in the stamp's name, so a change
# reinstalls.
HELM_VERSION := v3.22.0
ACTIONLINT_VERSION := v1.7.12
PROMETHEUS_VERSION := v0.316.0
CHECKOV_VERSION := 3.3.30
TOOLS_STAMP := .tools/.installed-helm-$(HELM_VERSION)-actionlint-$(ACTIONLINT_VERSION)-promtool-$(PROMETHEUS_VERSION)-checkov-$(CHECKOV_VERSION)
COUNT ?= 100000
RUNS ?= 30
RATE ?= 0

.DEFAULT_GOAL := help
.PHONY: lock kafka tools manifests chromium help install demo test test-deploy test-chaos test-takeover test-unit test-integration test-e2e lint bench soak simulate migrate worker clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# Every dependency from the lock, each file checked against its hash; then the project
# itself, with no dependency of its own choosing (`make lock` writes the locks).
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

PIP_TOOLS_VERSION := 7.6.2
LOCK_FLAGS := --quiet --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links

lock: ## resolve pyproject.toml again into requirements.lock (the wheel's) and requirements-dev.lock (with the dev tools), with hashes
	rm -rf .tools/pip-tools && $(PYTHON) -m venv .tools/pip-tools
	.tools/pip-tools/bin/pip install --quiet pip-tools==$(PIP_TOOLS_VERSION)
	.tools/pip-tools/bin/pip-compile $(LOCK_FLAGS) --upgrade -o requirements.lock pyproject.toml
	.tools/pip-tools/bin/pip-compile $(LOCK_FLAGS) --upgrade --extra dev -c requirements.lock -o requirements-dev.lock pyproject.toml
	cd benchmarks/quix && ../../.tools/pip-tools/bin/pip-compile $(LOCK_FLAGS) --upgrade -o requirements.lock requirements.in

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

$(TOOLS_STAMP):
	@command -v go >/dev/null || { echo "Go is needed to build Helm, actionlint and promtool (the deployment checks)"; exit 1; }
	mkdir -p .tools/bin
	GOBIN=$(CURDIR)/.tools/bin GOFLAGS=-mod=mod go install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	GOBIN=$(CURDIR)/.tools/bin GOFLAGS=-mod=mod go install github.com/rhysd/actionlint/cmd/actionlint@$(ACTIONLINT_VERSION)
	GOBIN=$(CURDIR)/.tools/bin GOFLAGS=-mod=mod go install github.com/prometheus/prometheus/cmd/promtool@$(PROMETHEUS_VERSION)
	rm -rf .tools/checkov && $(PYTHON) -m venv .tools/checkov
	.tools/checkov/bin/pip install --quiet --upgrade pip
	.tools/checkov/bin/pip install --quiet checkov==$(CHECKOV_VERSION)
	rm -f .tools/.installed-* && touch $(TOOLS_STAMP)

tools: $(TOOLS_STAMP) ## build Helm, actionlint and promtool (Go), install checkov: the deployment checks

manifests: $(STAMP) $(TOOLS_STAMP) ## render the Helm chart for dev and prod into deploy/k8s/rendered/
	$(PY) -m devtools.manifests

kafka: $(KAFKA_STAMP) ## fetch Apache Kafka's broker jars into .kafka/libs (Maven)

# Headless Chromium for the dashboard's browser test (Debian packages; root or sudo).
chromium:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium and chromium-driver for the dashboard test"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
	  { $$SUDO apt-get update -q >/dev/null && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }; }

install: $(STAMP) $(KAFKA_STAMP) $(NODE_STAMP) $(TOOLS_STAMP) chromium ## create .venv, install the package with its dev tools, Kafka's jars, Azurite, Chromium and the deployment checkers

demo: $(STAMP) $(KAFKA_STAMP) ## broker + PostgreSQL + migrations + worker + simulator (COUNT=100000), then a summary; stops everything
	$(PY) -m devtools.demo --count $(COUNT) --rate $(RATE)

test: $(STAMP) $(KAFKA_STAMP) $(NODE_STAMP) $(TOOLS_STAMP) chromium ## every test tier against the real broker (Kafka) and PostgreSQL, and the deployment checks
	$(PY) -m pytest --durations=15 tests/unit tests/deploy tests/integration tests/e2e

test-chaos: $(STAMP) $(KAFKA_STAMP) ## the long fault runs: 10 SIGKILLs across 500,000 events, PostgreSQL down 60 s
	$(PY) -m pytest tests/chaos -s

test-takeover: $(STAMP) $(KAFKA_STAMP) ## the two-worker SIGKILL takeover test RUNS times in a row (default 30); stops at the first failure
	@mkdir -p .run; for i in $$(seq 1 $(RUNS)); do \
	  started=$$(date +%s); \
	  $(PY) -m pytest -q -p no:cacheprovider --basetemp=.run/takeover-tmp tests/e2e/test_faults.py \
	    -k test_one_of_two_workers_sigkilled_the_other_takes_every_partition >.run/takeover-$$i.log 2>&1 \
	    || { echo "run $$i of $(RUNS): FAILED (.run/takeover-$$i.log)"; exit 1; }; \
	  echo "run $$i of $(RUNS): passed in $$(( $$(date +%s) - started )) s"; \
	done; echo "$(RUNS) of $(RUNS) passed"

test-unit: $(STAMP) ## unit tests only (no services)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP) $(KAFKA_STAMP) $(NODE_STAMP) ## integration tests (real broker, real PostgreSQL)
	$(PY) -m pytest tests/integration

test-e2e: $(STAMP) $(KAFKA_STAMP) chromium ## end-to-end tests (worker processes fed by the simulator)
	$(PY) -m pytest tests/e2e

test-deploy: $(STAMP) $(TOOLS_STAMP) ## the deployment artefacts: image, chart, Terraform, VM install, workflows (offline)
	$(PY) -m pytest tests/deploy

lint: $(STAMP) ## ruff, mypy and the import contracts (.importlinter: layers, no cycles)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache

# The Quix Streams peer of the benchmark, in a venv of its own (quixstreams pins pydantic
# below the dev lock's): benchmarks/quix/requirements.lock, hashed like the others.
QUIX_STAMP := .venv-quix/.installed
$(QUIX_STAMP): benchmarks/quix/requirements.lock
	$(PYTHON) -m venv .venv-quix
	.venv-quix/bin/pip install --quiet --require-hashes -r benchmarks/quix/requirements.lock
	touch $@

BENCH_ARGS ?= --peer quix
bench: $(STAMP) $(KAFKA_STAMP) $(QUIX_STAMP) ## throughput, latency and CPU per event against a raw aiokafka consumer and a Quix Streams peer (prints figures)
	$(PY) -m benchmarks.pipeline $(BENCH_ARGS)

SOAK_RATE ?= 8000
SOAK_MINUTES ?= 30
SOAK_WORKERS ?= 1
soak: $(STAMP) $(KAFKA_STAMP) ## SOAK_RATE payments/s for SOAK_MINUTES into SOAK_WORKERS workers: RSS, lag, CPU every 30 s, a plot, and an exactness check
	$(PY) -m benchmarks.soak --rate $(SOAK_RATE) --minutes $(SOAK_MINUTES) --workers $(SOAK_WORKERS)

simulate: $(STAMP) ## send COUNT events to BROKER_URL at RATE events/s
	$(PY) -m simulator --count $(COUNT) --rate $(RATE)

migrate: $(STAMP) ## migrate DATABASE_URL to head (faust -A app db upgrade)
	$(VENV)/bin/faust -A app db upgrade

worker: $(STAMP) ## run a worker on BROKER_URL / DATABASE_URL (web UI on 6066)
	$(VENV)/bin/faust -A app worker -l info --web-port 6066

clean: ## remove the venv and local run data
	rm -rf $(VENV) .venv-quix node_modules .kafka .tools .run data
