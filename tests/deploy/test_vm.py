"""The VM install: deploy/vm/install.sh run under a temporary root with the built wheel."""

from __future__ import annotations

import configparser
import re
import shutil
import stat
import subprocess

import pytest

from devtools.stack import REPO_ROOT

UNIT = REPO_ROOT / "deploy" / "vm" / "payment-monitor.service"


def test_the_install_makes_the_venv_the_env_file_and_the_unit(installed):
    venv = installed / "opt" / "payment-monitor" / "venv"
    for script in ("faust", "alembic", "payment-monitor-vault"):
        assert (venv / "bin" / script).exists(), script
    env_file = installed / "etc" / "payment-monitor" / "payment-monitor.env"
    text = env_file.read_text()
    assert not re.search(r"@[A-Z_]+@", text), "every template field filled"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o640
    assert "TOPIC_PARTITIONS=8" in text
    assert ("DATABASE_URL=postgresql+psycopg2://payment_monitor@pm-dev-pg.postgres.database"
            ".azure.com:5432/payment_monitor?sslmode=require") in text
    assert "KEYVAULT_SECRETS=DATABASE_PASSWORD=payment-monitor-db-password" in text
    assert not re.search(r"(?i)^[A-Z_]*(PASSWORD|CONNECTION_STRING|KEY)=", text, re.M), \
        "no secret in the env file: they come from Key Vault at start"
    assert (installed / "var" / "lib" / "payment-monitor" / "faust").is_dir()
    assert (installed / "etc" / "systemd" / "system" / "payment-monitor.service").read_text() \
        == UNIT.read_text()


def test_the_installed_settings_load(installed):
    """The env file is one the worker accepts (with the secret the launcher would add)."""
    venv = installed / "opt" / "payment-monitor" / "venv"
    env = {"PATH": "/usr/bin:/bin", "DATABASE_PASSWORD": "from-key-vault"}
    for line in (installed / "etc" / "payment-monitor" / "payment-monitor.env").read_text() \
            .splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = value
    out = subprocess.run([str(venv / "bin" / "python"), "-c",
                          "from runtime.settings import Settings; s = Settings(); print("
                          "s.broker.bootstrap, s.broker.sasl_mechanism, s.safe_database_url)"],
                         env=env, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "pm-dev-ehns.servicebus.windows.net:9093", "OAUTHBEARER",
        "postgresql+psycopg2://payment_monitor@pm-dev-pg.postgres.database.azure.com:5432/"
        "payment_monitor?sslmode=require"]


def test_a_second_install_keeps_the_operators_env_file(installed, tmp_path):
    env_file = installed / "etc" / "payment-monitor" / "payment-monitor.env"
    env_file.write_text(env_file.read_text() + "# an operator's edit\n")
    wheel = next((installed.parent).glob("wheel*/payment_monitor-*.whl"))
    out = subprocess.run(["bash", str(REPO_ROOT / "deploy" / "vm" / "install.sh"), str(wheel)],
                         env={"PATH": "/usr/bin:/bin", "PREFIX": str(installed),
                              "PYTHON": shutil.which("python3") or "python3"},
                         capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "keeping" in out.stdout
    assert env_file.read_text().endswith("# an operator's edit\n")


def test_a_bad_wheel_path_is_refused_clearly(tmp_path):
    out = subprocess.run(["bash", str(REPO_ROOT / "deploy" / "vm" / "install.sh"),
                          str(tmp_path / "nope.whl")],
                         env={"PATH": "/usr/bin:/bin", "PREFIX": str(tmp_path)},
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "no such wheel" in out.stderr


def test_the_unit_logs_to_journald_restarts_checks_first_and_never_migrates():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string(UNIT.read_text())
    service = unit["Service"]
    assert service["StandardOutput"] == service["StandardError"] == "journal"
    assert service["Restart"] == "on-failure"
    assert service["User"] == "payment-monitor"
    assert service["ExecStart"].startswith(
        "/opt/payment-monitor/venv/bin/payment-monitor-vault -- ")
    assert "faust -A app worker" in service["ExecStart"]
    # the doctor's checks before each start, with the same secrets
    assert service["ExecStartPre"] == service["ExecStart"].replace(
        "faust -A app worker -l info", "faust -A app doctor")
    assert "db upgrade" not in service["ExecStart"] + service["ExecStartPre"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not on this machine (a container)")
def test_systemd_accepts_the_unit(tmp_path):
    unit = tmp_path / "payment-monitor.service"
    unit.write_text(UNIT.read_text().replace("/opt/payment-monitor/venv/bin/payment-monitor-vault",
                                             "/bin/true"))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60, check=False)
    assert "payment-monitor.service" not in out.stderr or out.returncode == 0, out.stderr


def test_the_wheel_ships_every_file_beside_the_code(installed):
    """The data files the packages open (the dashboard, the configuration and its schemas,
    the scenarios, the migrations) are installed with them: the dashboard once was not, so
    /payments/dashboard/ failed wherever the wheel was installed (image and VM)."""
    site = next((installed / "opt" / "payment-monitor" / "venv" / "lib")
                .glob("python3*/site-packages"))
    tracked = subprocess.run(["git", "ls-files", "app", "config", "agents", "tables", "models",
                              "pipeline", "storage", "simulator"], cwd=REPO_ROOT,
                             capture_output=True, text=True, check=True).stdout.split()
    data = [path for path in tracked if not path.endswith(".py")]
    assert "app/dashboard.html" in data
    missing = [path for path in data if not (site / path).is_file()]
    assert not missing, f"in the repository, not in the wheel: {missing}"
    # the migrations, as the package payment_monitor_migrations (`faust -A app db upgrade`)
    shipped = subprocess.run(["git", "ls-files", "alembic"], cwd=REPO_ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    assert "alembic/env.py" in shipped and any("/versions/0001" in p for p in shipped)
    missing = [path for path in shipped if not (
        site / path.replace("alembic/", "payment_monitor_migrations/", 1)).is_file()]
    assert not missing, f"migrations not in the wheel: {missing}"
