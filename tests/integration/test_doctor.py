"""``faust -A app doctor``: every check passes on a working setup, and each one catches
the failure it names, with one line and exit status 2."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest

from app import doctor
from devtools.stack import FAUST
from simulator.producer import ensure_topic


def run_doctor(tmp_path: Path, **env: str) -> tuple[int, dict[str, dict], str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("PYTEST", "KEYVAULT_", "CONFIG_SOURCE"))}
    out = subprocess.run([FAUST, "-A", "app", "doctor", "--json"], env={**base, **env},
                         cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL, check=False)
    checks = {c["name"]: c for c in json.loads(out.stdout)} if out.stdout.strip() else {}
    return out.returncode, checks, out.stderr


@pytest.fixture
def working(broker, database_url, tmp_path) -> dict[str, str]:
    """What a worker needs, all of it there: a broker, a migrated database, a lake."""
    asyncio.run(ensure_topic(broker.bootstrap, "payments", 4))
    return {"BROKER_URL": broker.url, "DATABASE_URL": database_url,
            "APP_ID": f"pm-doctor-{uuid.uuid4().hex[:6]}", "TOPIC_PARTITIONS": "4",
            "RAW_EVENTS_URL": str(tmp_path / "lake")}


def test_a_working_setup_passes_every_check(working, tmp_path):
    code, checks, stderr = run_doctor(tmp_path, **working)
    assert code == 0, stderr
    assert {n: c["status"] for n, c in checks.items()} == {
        "broker": "ok", "database": "ok", "lake": "ok", "appconfig": "skip",
        "configuration": "ok", "keyvault": "skip"}
    # the changelogs and the config topic do not exist yet: the worker makes them on Kafka
    assert "created by the worker at start" in checks["broker"]["detail"]
    assert "(head)" in checks["database"]["detail"]
    assert list((tmp_path / "lake").iterdir()) == []  # its probe file is gone


def test_a_topic_with_other_partitions_fails_the_broker_check(working, tmp_path):
    code, checks, _ = run_doctor(tmp_path, **{**working, "TOPIC_PARTITIONS": "6"})
    assert code == 2
    assert checks["broker"]["status"] == "fail"
    assert "payments has 4 partitions, needs 6" in checks["broker"]["detail"]


def test_an_unreachable_broker_fails_the_broker_and_configuration_checks(working, tmp_path):
    code, checks, stderr = run_doctor(tmp_path, **{**working, "BROKER_URL": "kafka://127.0.0.1:9"})
    assert code == 2 and "check(s) failed: broker, configuration" in stderr
    assert checks["broker"]["detail"].startswith("cannot reach the broker at 127.0.0.1:9")
    assert "cannot read the config topic" in checks["configuration"]["detail"]
    assert checks["database"]["status"] == "ok"


def test_a_database_behind_the_release_fails_the_database_check(working, empty_database_url,
                                                                tmp_path):
    code, checks, _ = run_doctor(tmp_path, **{**working, "DATABASE_URL": empty_database_url})
    assert code == 2
    assert checks["database"]["status"] == "fail"
    assert "faust -A app db upgrade" in checks["database"]["detail"]


def test_an_unreachable_database_fails_without_its_password(working, tmp_path):
    url = "postgresql+psycopg2://monitor:s3cret-pw@127.0.0.1:9/none"
    code, checks, stderr = run_doctor(tmp_path, **{**working, "DATABASE_URL": url})
    assert code == 2
    assert checks["database"]["detail"].startswith("cannot reach the database at ")
    assert "s3cret-pw" not in json.dumps(checks) + stderr


def test_a_lake_that_cannot_be_written_fails_the_lake_check(working, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the lake's folder would go")
    code, checks, _ = run_doctor(tmp_path, **{**working, "RAW_EVENTS_URL": str(blocker / "raw")})
    assert code == 2
    assert checks["lake"]["status"] == "fail"
    assert checks["lake"]["detail"].startswith(f"cannot write to {blocker / 'raw'}")


def test_a_lake_of_the_old_layout_fails_the_lake_check_until_migrated(working, tmp_path):
    lake = tmp_path / "old"
    folder = lake / "date=2026-11-01" / "hour=10"
    folder.mkdir(parents=True)
    (folder / "payments-0-0-9.parquet").write_bytes(b"PAR1")
    code, checks, _ = run_doctor(tmp_path, **{**working, "RAW_EVENTS_URL": str(lake)})
    assert code == 2 and checks["lake"]["status"] == "fail"
    assert "1 hour folders of the old Parquet layout" in checks["lake"]["detail"]
    assert "faust -A app raw migrate" in checks["lake"]["detail"]


def test_a_configuration_that_does_not_compile_fails_the_configuration_check(working,
                                                                             tmp_path):
    broken = tmp_path / "metrics.yaml"
    broken.write_text("metrics: [{name: x, type: no-such-type}]\n")
    code, checks, _ = run_doctor(tmp_path, **{**working, "METRICS_CONFIG": str(broken)})
    assert code == 2
    assert checks["configuration"]["status"] == "fail"
    assert checks["configuration"]["detail"].startswith("does not compile: ")


def test_app_configuration_that_does_not_answer_fails_the_appconfig_check():
    def unreachable():
        raise ConnectionError("connection refused by the store")

    settings = SimpleNamespace(config_source="azure",
                               azure_appconfig_endpoint="https://pm.azconfig.io")
    manager = SimpleNamespace(source=SimpleNamespace(load=unreachable))
    with pytest.raises(doctor.Failed, match="App Configuration at https://pm.azconfig.io: "
                                            "ConnectionError: connection refused"):
        asyncio.run(doctor.check_appconfig(settings, manager))
    manager.source.load = lambda: {"a": 1, "b": 2, "c": 3}
    assert asyncio.run(doctor.check_appconfig(settings, manager)).endswith(": 3 keys")
    settings.config_source = "files"
    assert asyncio.run(doctor.check_appconfig(settings, manager)) is None  # skipped


def test_a_key_vault_secret_that_cannot_be_read_fails_the_keyvault_check(monkeypatch):
    assert asyncio.run(doctor.check_keyvault()) is None  # no KEYVAULT_URL: skipped
    monkeypatch.setenv("KEYVAULT_URL", "https://pm-kv.vault.azure.net/")
    monkeypatch.setenv("KEYVAULT_SECRETS", "DATABASE_PASSWORD=pm-db-password,"
                                           "EVENTHUBS_CONNECTION_STRING=pm-eh")
    secrets = {"pm-db-password": "hunter2-secret"}

    def getter(url):
        def get(name):
            return secrets[name]  # KeyError for the one the vault lacks
        return get

    monkeypatch.setattr(doctor, "key_vault_getter", getter)
    with pytest.raises(doctor.Failed) as failed:
        asyncio.run(doctor.check_keyvault())
    assert "'pm-eh' for EVENTHUBS_CONNECTION_STRING" in str(failed.value)
    secrets["pm-eh"] = "Endpoint=sb://x/;SharedAccessKey=abc"
    line = asyncio.run(doctor.check_keyvault())
    assert line.startswith("2 secret(s) readable at https://pm-kv.vault.azure.net/")
    assert "hunter2" not in line and "SharedAccessKey" not in line
