"""The one place where environment variables are read.

Every knob of the worker, the simulator and the sinks is a field of
:class:`Settings`; the field name in upper case is the environment variable.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
)

from pipeline.config import COMPLIANCE_KEY, METRICS_KEY, TRANSACTION_KEY, ConfigSource
from storage.broker import (
    EVENTHUBS_SUFFIX,
    EVENTHUBS_USERNAME,
    BrokerConnection,
    eventhubs_endpoint,
)
from storage.config_sources import AppConfigurationSource, FileSource


class Settings(BaseSettings):
    """Worker settings, validated once at start-up and frozen afterwards."""

    # hide_input_in_errors: an invalid secret must not be echoed in the error
    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_file=None,
                                      hide_input_in_errors=True)

    environment: str = Field("development", description="development | production")
    app_id: str = Field("payment-monitor", description="Faust app id = consumer group id")
    broker_url: str = Field("kafka://127.0.0.1:9092", description="Kafka bootstrap URL(s)")
    # How every Kafka client connects (storage/broker.py, docs/eventhubs.md).
    broker_security_protocol: str = Field(
        "", description="PLAINTEXT, SSL or SASL_SSL; empty: SASL_SSL with "
        "EVENTHUBS_CONNECTION_STRING, else PLAINTEXT")
    broker_sasl_mechanism: str = Field(
        "", description="PLAIN or OAUTHBEARER (azure-identity tokens); empty: PLAIN")
    broker_sasl_username: str = Field("", description="SASL PLAIN username")
    broker_sasl_password: SecretStr | None = Field(None, description="SASL PLAIN password")
    broker_ca_file: str = Field(
        "", description="PEM file of the CAs that sign the broker's certificate; empty: the "
        "system's")
    eventhubs_connection_string: SecretStr | None = Field(
        None, description="Event Hubs namespace connection string: SASL_SSL PLAIN as "
        "$ConnectionString, bootstrap <namespace>.servicebus.windows.net:9093 unless "
        "BROKER_URL is set")
    broker_session_timeout_s: float = Field(
        30.0, ge=6, le=60, description="consumer group session timeout: a worker that "
        "died is replaced after this long")
    database_url: str = Field(
        "postgresql+psycopg2://postgres@127.0.0.1:5432/payment_monitor",
        description="SQLAlchemy URL of the metrics database (no password in it when "
        "DATABASE_PASSWORD is set)",
    )
    database_password: SecretStr | None = Field(
        None, description="PostgreSQL password, put into DATABASE_URL (from Key Vault: a "
        "file in SECRETS_DIR on AKS, the environment the VM launcher sets)")
    raw_events_url: str = Field("./data/raw", description="Parquet lake: path, file:// or abfs://")
    app_datadir: str = Field("./data/faust", description="Faust data dir (RocksDB tables)")
    store_url: str = Field("rocksdb://", description="Faust table store: rocksdb:// or memory://")
    topic_partitions: int = Field(4, ge=1, description="partitions of payments and changelogs")
    topic_replicas: int = Field(1, ge=1, description="replication factor of declared topics")
    web_port: int = Field(6066, description="Faust web UI port (faust --web-port wins)")
    web_bind: str = Field("127.0.0.1", description="web UI bind address (0.0.0.0 in containers)")
    web_host: str = Field(
        "127.0.0.1", description="host name other workers reach this one's web UI at (the pod "
        "IP on AKS): the web views route requests for other partitions there")

    web_admin_token: SecretStr | None = Field(
        None, description="bearer token the views that change state require "
        "(POST /payments/stats/reset/); unset: those views are off, every view read-only")

    # Operations (docs/operations.md).
    log_format: Literal["text", "json"] = Field(
        "text", description="text for people, json for log collectors: one object per line")
    health_stall_s: float = Field(
        60, gt=0, description="/healthz fails when no batch was handled this long while "
        "there is lag (and PostgreSQL is not being retried)")
    sink_stuck_s: float = Field(
        30, gt=0, description="/readyz fails while one sink step has run this long")
    commit_timeout_s: float = Field(
        120, gt=0, le=600, description="the producer flush (changelog and DLQ records) and "
        "the offset commit of one sink flush must each finish within this long, or the worker "
        "exits with status 2 for its supervisor to restart it (like Kafka's "
        "delivery.timeout.ms); nothing uncommitted is lost, it is read again. At most 600: "
        "half the producer's request timeout")

    # Hot path tuning (see docs/adr/0001-batch-path.md for the measurements).
    max_poll_records: int = Field(5000, ge=1, description="records per fetch")
    fetch_min_bytes: int = Field(
        1, ge=1, le=52_428_800, description="the broker answers a fetch once it holds this "
        "many bytes for it ... (Kafka's fetch.min.bytes)")
    fetch_max_wait_ms: int = Field(
        200, ge=0, le=30_000, description="... or once it has waited this long "
        "(fetch.max.wait.ms; Faust fixes 1,500): a fetch of partitions with nothing new "
        "holds up the next fetch of the others this long at most")
    producer_linger_s: float = Field(0.05, ge=0, description="producer linger, seconds")
    empty_fetch_pause_s: float = Field(0.01, ge=0, description="pause after an empty fetch")
    producer_buffer_messages: int = Field(10_000, ge=100, description="producer buffer bound")
    sink_linger_s: float = Field(0.2, ge=0, description="gather batches this long per DB write")
    sink_queue_events: int = Field(
        5_000, ge=1, description="events queued for the sinks (each holds its payment, its "
                                  "metrics and its raw message)")
    gc_threshold: str = Field(
        "100000,50,100", description="Python gc thresholds (gen0,gen1,gen2) set at start-up")
    gil_switch_interval_ms: float = Field(
        1.0, gt=0, le=100, description="how long a thread may hold the GIL while another "
        "waits for it (Python's switch interval, 5 ms by default): the fetch loop waits "
        "up to that long behind the sink thread each time it takes the GIL back")

    # Sinks.
    parquet_flush_rows: int = Field(50_000, ge=1, description="flush a partition's file at N rows")
    parquet_flush_seconds: float = Field(
        5.0, gt=0, description="... or when its oldest row is N s old")
    db_pool_min: int = Field(2, ge=1, description="connections kept in the pool")
    db_pool_max: int = Field(10, ge=1, description="connections at most")
    db_statement_timeout_ms: int = Field(30_000, ge=0, description="statement timeout, ms")
    db_retry_seconds: float = Field(
        300, ge=0, description="how long a sink write is retried (backoff 0.5 s doubling to "
        "15 s) while PostgreSQL is unreachable, before the worker crashes")


    # Azure Blob Storage for an abfs:// RAW_EVENTS_URL: one of the three ways.
    azure_storage_connection_string: SecretStr | None = Field(
        None, description="connection string of the storage account (wins over the others)")
    azure_storage_account_name: str = Field("", description="storage account name")
    azure_storage_account_key: SecretStr | None = Field(None, description="account key")
    azure_use_default_credential: bool = Field(
        False, description="authenticate with DefaultAzureCredential (managed identity, "
        "workload identity, az login) and AZURE_STORAGE_ACCOUNT_NAME")

    # Validation and the dead-letter path (docs/errors.md).
    validation_config: str = Field(
        "", description="validation YAML (schema, mode, rules); empty: the shipped "
        "config/validation.yaml")
    dedupe_window_s: float = Field(
        3_600, gt=0, description="a transaction_id seen within this many seconds (broker "
        "time) is a duplicate; older ids expire")
    dedupe_purge_interval_s: float = Field(
        600, gt=0, description="how often expired ids are deleted from the seen-ids table")
    failed_retention_days: int = Field(180, ge=1, description="days failed_items rows are kept")
    lake_retention_days: int = Field(90, ge=1, description="days of raw events kept in the lake")
    lake_optimize_interval_s: float = Field(
        3600, gt=0, description="how often the leader compacts the lake's small files (Delta "
        "optimize of the hours that ended two hours ago or more)")
    lake_optimize_target_mb: int = Field(
        128, ge=1, le=1024, description="the size of the files the lake's compaction writes")
    transactions_retention_days: int = Field(
        365, ge=1, description="days normalized_transactions rows are kept (event time)")
    metrics_retention_days: int = Field(365, ge=1, description="days dynamic_metrics rows are kept")
    histograms_retention_days: int = Field(
        730, ge=1, description="days aggregate_histograms windows are kept")
    retention_interval_s: float = Field(
        3600, gt=0, description="how often the retention job runs (on the leader worker)")

    # Metrics and windows (docs/metrics.md).
    metrics_config: str = Field(
        "", description="metrics:definitions:v1 YAML; empty: the shipped config/metrics.yaml")
    compliance_config: str = Field(
        "", description="compliance:rules:v1 YAML; empty: the shipped config/compliance.yaml")
    window_sizes: str = Field(
        "300,3600", description="tumbling event-time window sizes in seconds, comma-separated; "
        "each a multiple of the smallest")
    window_grace_s: float = Field(
        120, ge=0, description="a window still takes late events this long after it ends "
        "(stream time); later ones are counted in late_events only")
    window_fold_events: int = Field(
        256, ge=1, le=100_000, description="a partition's batches wait until they hold this "
        "many messages before their windowed metrics are computed together (every reader "
        "of the window tables, and each commit, takes the waiting ones in first); 1 "
        "computes them batch by batch")
    window_retention_s: float = Field(
        7200, gt=0, description="windows are deleted from the tables (RocksDB and changelog) "
        "this long after they end (stream time); PostgreSQL keeps them")

    # Configuration: sources, hot reload (docs/configuration.md).
    config_source: str = Field(
        "files", description="files (VALIDATION_CONFIG, METRICS_CONFIG, COMPLIANCE_CONFIG or "
        "the shipped config/) or azure (Azure App Configuration)")
    config_watch: bool = Field(
        False, description="the leader polls the source and pushes each valid change to the "
        "config topic (development with files; on by itself for azure)")
    config_source_poll_s: float = Field(
        1.0, gt=0, description="how often the leader polls the source when watching")
    config_sync_interval_s: float = Field(
        0.25, gt=0, description="how often each worker looks at the config table for a new "
        "version")
    azure_appconfig_connection_string: SecretStr | None = Field(
        None, description="App Configuration connection string (wins over the endpoint)")
    azure_appconfig_endpoint: str = Field(
        "", description="https://<name>.azconfig.io, authenticated by DefaultAzureCredential")
    azure_appconfig_label: str = Field("", description="label of the three keys (empty: none)")
    azure_appconfig_sentinel_key: str = Field(
        "payment-monitor:sentinel", description="key whose change triggers a reload")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                   init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        """The environment, then ``SECRETS_DIR``: one file per secret setting, named after
        it (``database_password``), as the Key Vault CSI driver mounts them on AKS."""
        secrets_dir = os.environ.get("SECRETS_DIR")
        if not secrets_dir:
            return init_settings, env_settings
        if not Path(secrets_dir).is_dir():
            raise ValueError(f"SECRETS_DIR={secrets_dir} is not a directory")
        return init_settings, env_settings, SecretsSettingsSource(settings_cls,
                                                                  secrets_dir=secrets_dir)

    @field_validator("window_sizes")
    @classmethod
    def _window_sizes(cls, value: str) -> str:
        try:
            sizes = sorted({int(part) for part in value.split(",") if part.strip()})
        except ValueError:
            raise ValueError(f"WINDOW_SIZES must be integers (seconds), got {value!r}") from None
        if not sizes or sizes[0] <= 0:
            raise ValueError(f"WINDOW_SIZES must be positive seconds, got {value!r}")
        if any(s % sizes[0] for s in sizes):
            raise ValueError(f"WINDOW_SIZES must be multiples of the smallest ({sizes[0]} s), "
                             f"so larger windows are merges of smaller ones: got {value!r}")
        if 3600 % sizes[0] and sizes[0] % 3600:
            raise ValueError(f"the smallest window ({sizes[0]} s) must divide an hour")
        return value

    @field_validator("gc_threshold")
    @classmethod
    def _gc_threshold(cls, value: str) -> str:
        parts = value.split(",")
        if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"GC_THRESHOLD must be three positive integers, got {value!r}")
        return value

    @property
    def gc_thresholds(self) -> tuple[int, int, int]:
        a, b, c = (int(p) for p in self.gc_threshold.split(","))
        return a, b, c

    @property
    def window_size_list(self) -> tuple[int, ...]:
        return tuple(sorted({int(p) for p in self.window_sizes.split(",") if p.strip()}))

    @field_validator("environment")
    @classmethod
    def _known_environment(cls, value: str) -> str:
        if value not in {"development", "production"}:
            raise ValueError("ENVIRONMENT must be 'development' or 'production'")
        return value

    @model_validator(mode="after")
    def _config_source(self) -> Settings:
        if self.config_source not in {"files", "azure"}:
            raise ValueError(f"CONFIG_SOURCE must be 'files' or 'azure', "
                             f"not {self.config_source!r}")
        if (self.config_source == "azure" and self.azure_appconfig_connection_string is None
                and not self.azure_appconfig_endpoint):
            raise ValueError("CONFIG_SOURCE=azure needs AZURE_APPCONFIG_CONNECTION_STRING or "
                             "AZURE_APPCONFIG_ENDPOINT")
        return self

    @model_validator(mode="after")
    def _lake_credentials(self) -> Settings:
        self.lake_storage_options  # noqa: B018 - raises with a clear message when missing
        return self

    @model_validator(mode="after")
    def _no_defaults_in_production(self) -> Settings:
        if self.environment == "production":
            for name in ("database_url", "broker_url"):
                if getattr(self, name) == type(self).model_fields[name].default:
                    raise ValueError(f"{name.upper()} must be set when ENVIRONMENT=production")
        return self

    @model_validator(mode="after")
    def _broker_connection(self) -> Settings:
        self.broker  # noqa: B018 - raises with a clear message when inconsistent
        return self

    @property
    def broker_bootstrap(self) -> str:
        """``host:port[,host:port]`` without the ``kafka://`` scheme, for raw clients.

        With only ``EVENTHUBS_CONNECTION_STRING``, its namespace on port 9093.
        """
        if self.eventhubs_connection_string is not None and "broker_url" not in \
                self.model_fields_set:
            return eventhubs_endpoint(self.eventhubs_connection_string.get_secret_value())
        return ",".join(part.split("://", 1)[-1] for part in self.broker_url.split(";"))

    @property
    def faust_broker_url(self) -> str:
        return ";".join(f"kafka://{host}" for host in self.broker_bootstrap.split(","))

    @property
    def broker(self) -> BrokerConnection:
        """How every Kafka client connects (the one helper: storage/broker.py)."""
        bootstrap = self.broker_bootstrap
        conn_string = self.eventhubs_connection_string
        protocol = self.broker_security_protocol or ("SASL_SSL" if conn_string else "PLAINTEXT")
        mechanism = self.broker_sasl_mechanism or ("PLAIN" if protocol == "SASL_SSL" else "")
        username, password = self.broker_sasl_username, self.broker_sasl_password
        if conn_string is not None and mechanism == "PLAIN":
            username, password = EVENTHUBS_USERNAME, conn_string
        eventhubs = conn_string is not None or any(
            h.rsplit(":", 1)[0].endswith(EVENTHUBS_SUFFIX) for h in bootstrap.split(","))
        return BrokerConnection(bootstrap, protocol, mechanism, username, password,
                                self.broker_ca_file, eventhubs, self.broker_session_timeout_s)

    @property
    def lake_storage_options(self) -> dict[str, Any]:
        """fsspec options for RAW_EVENTS_URL: credentials for abfs://, nothing for a path."""
        if not self.raw_events_url.startswith(("abfs://", "abfss://", "az://")):
            return {}
        if self.azure_storage_connection_string is not None:
            return {"connection_string":
                    self.azure_storage_connection_string.get_secret_value()}
        if self.azure_storage_account_name and self.azure_storage_account_key is not None:
            return {"account_name": self.azure_storage_account_name,
                    "account_key": self.azure_storage_account_key.get_secret_value()}
        if self.azure_storage_account_name and self.azure_use_default_credential:
            return {"account_name": self.azure_storage_account_name, "anon": False}
        raise ValueError("RAW_EVENTS_URL is on Azure Blob Storage but no credentials are set: "
                         "set AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT_NAME "
                         "with AZURE_STORAGE_ACCOUNT_KEY or AZURE_USE_DEFAULT_CREDENTIAL=true")

    @property
    def secrets(self) -> list[str]:
        """Every secret value set (passwords, keys, connection strings, the admin token):
        what the log redaction looks for."""
        values = [v.get_secret_value() for v in (
            self.broker_sasl_password, self.eventhubs_connection_string, self.web_admin_token,
            self.azure_storage_connection_string, self.azure_storage_account_key,
            self.azure_appconfig_connection_string) if v is not None]
        password = urlsplit(self.database_url).password
        if password:
            values.append(password)
        if self.database_password is not None:
            values.append(self.database_password.get_secret_value())
        return values

    @property
    def database_url_with_password(self) -> str:
        """DATABASE_URL with DATABASE_PASSWORD put in (URL-quoted), for the engine only:
        log :attr:`safe_database_url`."""
        if self.database_password is None:
            return self.database_url
        parts = urlsplit(self.database_url)
        password = quote(self.database_password.get_secret_value(), safe="")
        userinfo, _, host = parts.netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        if not user:
            raise ValueError("DATABASE_PASSWORD is set but DATABASE_URL names no user")
        return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))

    @property
    def safe_database_url(self) -> str:
        """The database URL with any password masked, for logs and errors."""
        return mask_url(self.database_url)


class VaultSettings(BaseSettings):
    """What ``payment-monitor-vault`` (app/vault.py) reads before the worker starts."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", env_file=None)

    keyvault_url: str = Field(
        description="https://<vault>.vault.azure.net/: the VM launcher reads secrets there")
    keyvault_secrets: str = Field(
        description="SETTING=secret-name pairs, comma-separated, e.g. "
        "DATABASE_PASSWORD=payment-monitor-db-password")


def mask_url(url: str) -> str:
    """Return ``url`` with the password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read from the environment once)."""
    return Settings()


def config_source(settings: Settings) -> ConfigSource:
    """The source CONFIG_SOURCE names, with its paths or credentials from the settings."""
    if settings.config_source == "azure":
        from azure.appconfiguration import AzureAppConfigurationClient

        if settings.azure_appconfig_connection_string is not None:
            client = AzureAppConfigurationClient.from_connection_string(
                settings.azure_appconfig_connection_string.get_secret_value())
        else:
            from azure.identity import DefaultAzureCredential

            client = AzureAppConfigurationClient(settings.azure_appconfig_endpoint,
                                                 DefaultAzureCredential())
        return AppConfigurationSource(client, settings.azure_appconfig_label,
                                      settings.azure_appconfig_sentinel_key)
    paths = {key: Path(value) for key, value in (
        (TRANSACTION_KEY, settings.validation_config),
        (METRICS_KEY, settings.metrics_config),
        (COMPLIANCE_KEY, settings.compliance_config)) if value}
    return FileSource(paths)
