"""The composition root: :func:`build` makes the worker from its settings.

Each piece lives in its own module; this one only connects them, in the order a
payment flows (docs/architecture.md follows the same path):

1. the app and its batch path (:mod:`runtime.faust_app`, :mod:`runtime.batching`) and the
   topics (:mod:`runtime.topics`);
2. the configuration (:mod:`pipeline.config`, read from the config topic by
   :mod:`agents.config`);
3. the state: window tables (:mod:`tables.payments`) and seen ids
   (:mod:`tables.seen`);
4. the sinks: PostgreSQL (:mod:`storage.postgres`) and the lake
   (:mod:`storage.parquet`), driven by :mod:`agents.sinks`;
5. the ingest handler (:mod:`agents.ingest`) and the periodic jobs
   (:mod:`agents.retention`);
6. the commands and the web views (:mod:`app.commands`, :mod:`app.web`).
"""

from __future__ import annotations

from typing import Any

from agents.config import register_config
from agents.ingest import register_ingest
from agents.retention import register_retention
from agents.sinks import SinkService
from app.cli import fail
from app.commands import register_commands, register_raw_commands
from app.config_commands import register_config_commands
from app.doctor import register_doctor_command
from app.flag_commands import register_flag_commands
from app.health import END_OFFSETS_TIMEOUT_S, Health
from app.investigate_commands import register_investigate_commands
from app.ops_commands import register_ops_commands
from app.reprocess_commands import register_reprocess_command
from app.topic_commands import register_topic_commands
from app.web import register_views
from pipeline.config import ConfigManager
from runtime.faust_app import PaymentApp, create_app
from runtime.settings import Settings, config_source
from runtime.telemetry import Telemetry
from runtime.topics import PAYMENTS, declare_topics
from storage.broker import EndOffsets
from storage.flags import ComplianceFlags
from storage.parquet import RawEventWriter
from storage.postgres import PostgresSink, create_db_engine
from tables.payments import WindowState, declare_tables
from tables.seen import SeenIds, declare_seen_table


def build(settings: Settings) -> PaymentApp:
    """Create the app with its topics, tables, ingest handler, sinks and views."""
    faust_app = create_app(settings)
    payments, dlq = declare_topics(faust_app)
    partitions = settings.topic_partitions
    config = ConfigManager(config_source(settings))  # loaded when the worker starts
    windows = WindowState(faust_app,
                          declare_tables(faust_app, partitions, settings.window_size_list),
                          config.bounds, settings.window_grace_s, PAYMENTS,
                          fold_events=settings.window_fold_events)
    # PostgreSQL's claims decide whether an id is new (claims=db below): no ids in memory
    seen = SeenIds(faust_app, declare_seen_table(faust_app, partitions),
                   settings.dedupe_window_s, ids_in_memory=False)

    db_engine = create_db_engine(
        settings.database_url_with_password,
        pool_min=settings.db_pool_min,
        pool_max=settings.db_pool_max,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    db = PostgresSink(db_engine, give_up_after=settings.db_retry_seconds,
                      finest_window=windows.finest)
    lake = RawEventWriter(
        settings.raw_events_url,
        flush_rows=settings.parquet_flush_rows,
        flush_seconds=settings.parquet_flush_seconds,
        storage_options=settings.lake_storage_options,
    )
    telemetry = Telemetry()
    sinks = SinkService(faust_app, db, lake, windows, seen, telemetry,
                        max_events=settings.sink_queue_events, linger=settings.sink_linger_s,
                        commit_timeout=settings.commit_timeout_s,
                        # a hand-over still writing when the group would give its partitions
                        # to others must end the process first (SinkService.on_revoked)
                        handover_limit=0.75 * faust_app.conf.broker_rebalance_timeout,
                        on_stuck=fail)
    faust_app.service(sinks)  # type: ignore[arg-type]  # an instance is accepted too

    config_sync = register_config(faust_app, settings, config)
    stats = register_ingest(faust_app, payments, dlq, windows, seen, sinks, config,
                            config_sync, telemetry, claims=db)
    telemetry.watch_flags(db.compliance_flags, lambda: _rule_metrics(config))
    telemetry.watch_config(lambda: config.stats)
    register_retention(faust_app, db_engine, seen, lake, settings, windows)
    register_commands(faust_app, settings, db_engine, config)
    register_raw_commands(faust_app, settings)
    register_flag_commands(faust_app, settings, db_engine)
    register_investigate_commands(faust_app, settings, db_engine, config)
    register_config_commands(faust_app, settings, config)
    register_reprocess_command(faust_app, settings, db_engine, config)
    register_topic_commands(faust_app, settings)
    register_ops_commands(faust_app, settings)
    register_doctor_command(faust_app, settings, config)

    async def _on_revoked(sender: object, revoked: set, **kwargs: Any) -> None:
        await sinks.on_revoked({tp for tp in revoked if tp.topic == payments.get_topic_name()})

    faust_app.on_partitions_revoked.connect(_on_revoked)  # type: ignore[arg-type]

    async def _on_assigned(sender: object, assigned: set, **kwargs: Any) -> None:
        sinks.on_assigned({tp for tp in assigned if tp.topic == payments.get_topic_name()})

    faust_app.on_partitions_assigned.connect(_on_assigned)  # type: ignore[arg-type]
    end_offsets = EndOffsets(settings.broker, timeout_s=END_OFFSETS_TIMEOUT_S)

    async def _on_shutdown(sender: object, **kwargs: Any) -> None:
        await end_offsets.close()

    faust_app.on_before_shutdown.connect(_on_shutdown)  # type: ignore[arg-type]
    health = Health(faust_app, settings, telemetry, sinks, config, config_sync, windows,
                    end_offsets)
    register_views(faust_app, settings, stats, sinks, windows, seen, config, health, telemetry,
                   ComplianceFlags(db_engine))
    return faust_app


def _rule_metrics(config: ConfigManager) -> list[str]:
    """The active compliance rules' metric names (``compliance_<rule>``)."""
    if not config.loaded:
        return []
    return [d.name for rule in config.get_compliance_rules() for d in rule.definitions()]
