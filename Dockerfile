# syntax=docker/dockerfile:1
# The worker's image: `docker build -t payment-monitor .` (deploy/README.md).
#
# Stage 1 builds every dependency's wheel, as requirements.lock pins them (with hashes),
# and the project's wheel; stage 2 installs them into a venv with no compiler, no pip
# cache and no index (so nothing but the locked versions), and runs as a non-root user.
# tests/deploy/test_image.py replays stage 2's install into a clean venv from the
# built wheel (no container engine runs on the CI machines).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml README.md requirements.lock ./
# The dependencies exactly as locked, each file checked against its hash
RUN pip wheel --require-hashes --wheel-dir /wheels -r requirements.lock
COPY app/ app/
COPY runtime/ runtime/
COPY agents/ agents/
COPY config/ config/
COPY devtools/ devtools/
COPY models/ models/
COPY pipeline/ pipeline/
COPY simulator/ simulator/
COPY storage/ storage/
COPY tables/ tables/
COPY alembic/ alembic/
# No git here: the version (from the tag) and the commit come as build arguments
# (deploy.yml), for `faust -A app version` and payment_monitor_build_info.
ARG VERSION=0.0.0+unknown
ARG REVISION=unknown
RUN SETUPTOOLS_SCM_PRETEND_VERSION="${VERSION}" \
    SETUPTOOLS_SCM_PRETEND_METADATA="{node=\"g${REVISION}\"}" \
    pip wheel --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS runtime
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    PATH=/opt/payment-monitor/venv/bin:$PATH \
    APP_DATADIR=/var/lib/payment-monitor/faust \
    WEB_BIND=0.0.0.0 \
    WEB_PORT=6066 \
    LOG_FORMAT=json
RUN groupadd --system --gid 10001 payment-monitor \
    && useradd --system --uid 10001 --gid payment-monitor --home-dir /var/lib/payment-monitor \
       --shell /usr/sbin/nologin payment-monitor \
    && install -d -o payment-monitor -g payment-monitor -m 0750 /var/lib/payment-monitor/faust
COPY --from=build /wheels /wheels
RUN python -m venv /opt/payment-monitor/venv \
    && /opt/payment-monitor/venv/bin/pip install --no-index --find-links=/wheels payment-monitor \
    && rm -rf /wheels
# Migrations run from this image as their own job (`faust -A app db upgrade`: the wheel
# ships them; Helm hook, deploy.yml); the worker never migrates.
WORKDIR /opt/payment-monitor
USER 10001:10001
VOLUME ["/var/lib/payment-monitor"]
EXPOSE 6066
# SIGTERM: the worker stops fetching, flushes its sinks and commits (docs/operations.md)
STOPSIGNAL SIGTERM
ENTRYPOINT ["faust", "-A", "app"]
CMD ["worker", "-l", "info"]
