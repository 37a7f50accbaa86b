from __future__ import annotations

import gc
import sys

import pytest
from pydantic import ValidationError

from runtime.faust_app import create_app
from runtime.settings import Settings, mask_url


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("BROKER_URL", "kafka://10.0.0.1:9093")
    monkeypatch.setenv("TOPIC_PARTITIONS", "8")
    s = Settings()
    assert s.topic_partitions == 8
    assert s.broker_bootstrap == "10.0.0.1:9093"


def test_bad_values_are_refused(monkeypatch):
    monkeypatch.setenv("TOPIC_PARTITIONS", "0")
    with pytest.raises(ValidationError, match="topic_partitions"):
        Settings()
    monkeypatch.setenv("TOPIC_PARTITIONS", "4")
    monkeypatch.setenv("ENVIRONMENT", "staging")
    with pytest.raises(ValidationError, match="ENVIRONMENT"):
        Settings()


def test_passwords_are_masked():
    assert mask_url("postgresql://u:s3cret@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"
    s = Settings(database_url="postgresql+psycopg2://app:hunter2@db/x")
    assert "hunter2" not in s.safe_database_url


def test_production_refuses_the_development_defaults(monkeypatch):
    monkeypatch.setenv("ENVIRONMENT", "production")
    with pytest.raises(ValidationError, match="DATABASE_URL must be set"):
        Settings()
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://app@db.internal/pm")
    monkeypatch.setenv("BROKER_URL", "kafka://kafka.internal:9092")
    assert Settings().environment == "production"


def test_lake_credentials_for_azure(monkeypatch):
    assert Settings(raw_events_url="/data/raw").lake_storage_options == {}
    with pytest.raises(ValidationError, match="no credentials are set"):
        Settings(raw_events_url="abfs://lake/raw")
    conn = "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=k2;"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", conn)
    s = Settings(raw_events_url="abfs://lake/raw")
    assert s.lake_storage_options == {"connection_string": conn}
    assert "k2" not in repr(s) and "k2" not in str(s.model_dump())  # a secret stays secret
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING")
    s = Settings(raw_events_url="abfs://lake/raw", azure_storage_account_name="acct",
                 azure_storage_account_key="k3")
    assert s.lake_storage_options == {"account_name": "acct", "account_key": "k3"}
    s = Settings(raw_events_url="abfs://lake/raw", azure_storage_account_name="acct",
                 azure_use_default_credential=True)
    assert s.lake_storage_options == {"account_name": "acct", "anon": False}


def test_database_password_goes_into_the_url_and_nowhere_else(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://app@db.internal:5432/pm?sslmode=require")
    monkeypatch.setenv("DATABASE_PASSWORD", "p@ss:w/rd")
    s = Settings()
    assert s.database_url_with_password == (
        "postgresql+psycopg2://app:p%40ss%3Aw%2Frd@db.internal:5432/pm?sslmode=require")
    assert "p@ss" not in s.safe_database_url
    assert "p@ss:w/rd" in s.secrets  # so the log redaction hides it


def test_a_password_needs_a_user_in_the_url(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg2://db.internal/pm")
    monkeypatch.setenv("DATABASE_PASSWORD", "secret")
    with pytest.raises(ValueError, match="names no user"):
        Settings().database_url_with_password  # noqa: B018


def test_secrets_dir_files_fill_secret_settings(monkeypatch, tmp_path):
    """The Key Vault CSI driver mounts one file per secret, named after the setting."""
    (tmp_path / "database_password").write_text("from-key-vault")
    (tmp_path / "eventhubs_connection_string").write_text(
        "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=k;SharedAccessKey=v")
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path))
    s = Settings()
    assert s.database_password.get_secret_value() == "from-key-vault"
    assert s.broker.bootstrap == "ns.servicebus.windows.net:9093"
    monkeypatch.setenv("DATABASE_PASSWORD", "from-env")  # the environment wins
    assert Settings().database_password.get_secret_value() == "from-env"


def test_a_missing_secrets_dir_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("SECRETS_DIR", str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="SECRETS_DIR=.* is not a directory"):
        Settings()


def test_the_worker_takes_its_gil_switch_interval_and_gc_thresholds(monkeypatch, tmp_path):
    monkeypatch.setenv("GIL_SWITCH_INTERVAL_MS", "2.5")
    before_interval, before_gc = sys.getswitchinterval(), gc.get_threshold()
    try:
        create_app(Settings(store_url="memory://", app_datadir=str(tmp_path),
                            broker_url="kafka://127.0.0.1:1", gc_threshold="5000,20,30"))
        assert sys.getswitchinterval() == pytest.approx(0.0025)
        assert gc.get_threshold() == (5000, 20, 30)
    finally:
        sys.setswitchinterval(before_interval)
        gc.set_threshold(*before_gc)
    assert Settings().gil_switch_interval_ms == 2.5
    monkeypatch.setenv("GIL_SWITCH_INTERVAL_MS", "0")
    with pytest.raises(ValidationError, match="gil_switch_interval_ms"):
        Settings()
