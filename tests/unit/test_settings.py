from __future__ import annotations

import pytest
from pydantic import ValidationError

from app.settings import Settings, mask_url


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
