"""The worker: ``faust -A app worker`` imports this module and runs ``app``.

Wiring only; each piece lives in its own module:
settings (:mod:`app.settings`), the app and its batch path
(:mod:`app.faust_app`, :mod:`app.batching`), topics (:mod:`app.topics`),
tables (:mod:`tables.payments`, :mod:`tables.cache`), the ingest handler
(:mod:`agents.ingest`), the sinks (:mod:`agents.sinks`, :mod:`storage`) and the web
views (:mod:`app.web`).

``app`` is built on first access (PEP 562 module ``__getattr__``), so importing a
submodule such as ``app.settings`` does not build the worker.
"""

from __future__ import annotations

from typing import Any

from app.faust_app import PaymentApp, create_app
from app.settings import Settings, get_settings

__all__ = ["app", "build", "PaymentApp", "Settings"]


def build(settings: Settings) -> PaymentApp:
    """Create the app with its topics, tables, ingest handler, sinks and views."""
    # The agents import app's modules; importing them here keeps that one-way.
    from agents.config import register_config
    from agents.ingest import register_ingest
    from agents.retention import register_retention
    from agents.sinks import SinkService
    from app.commands import register_commands, register_raw_commands
    from app.config_commands import register_config_commands
    from app.topic_commands import register_topic_commands
    from app.topics import declare_topics
    from app.web import register_views
    from pipeline.config import ConfigManager
    from storage.config_sources import source_from_settings
    from storage.parquet import RawEventWriter
    from storage.postgres import PostgresSink, create_db_engine, partial_rows
    from tables.payments import declare_tables, metrics_table, split_metrics_key, window_cache
    from tables.seen import SeenIds, declare_seen_table

    faust_app = create_app(settings)
    payments, dlq = declare_topics(faust_app)
    windows = declare_tables(faust_app, settings.window_size_list)
    config = ConfigManager(source_from_settings(settings))  # loaded when the worker starts
    db_engine = create_db_engine(
        settings.database_url,
        pool_min=settings.db_pool_min,
        pool_max=settings.db_pool_max,
        statement_timeout_ms=settings.db_statement_timeout_ms,
    )
    lake = RawEventWriter(
        settings.raw_events_url,
        flush_rows=settings.parquet_flush_rows,
        flush_seconds=settings.parquet_flush_seconds,
        storage_options=settings.lake_storage_options,
    )
    cache = window_cache(faust_app, windows, config.bounds)
    seen = SeenIds(faust_app, declare_seen_table(faust_app), settings.dedupe_window_s)
    db = PostgresSink(db_engine, give_up_after=settings.db_retry_seconds,
                      bounds=config.bounds)
    sizes = {metrics_table(size): size for size in windows.sizes}

    def flushed_windows(partition: int) -> list:
        rows = []
        for name, key, value in cache.take_flushed(partition):
            if name in sizes:
                start, part = split_metrics_key(key)
                rows += partial_rows(sizes[name], start, part, value)
        return rows

    sinks = SinkService(faust_app, db, lake, [cache, seen],
                        max_events=settings.sink_queue_events, linger=settings.sink_linger_s,
                        flushed_windows=flushed_windows)
    faust_app.service(sinks)  # type: ignore[arg-type]  # an instance is accepted too
    config_sync = register_config(faust_app, settings, config)
    stats = register_ingest(faust_app, payments, dlq, windows, cache, seen, sinks, config,
                            config_sync, settings.window_grace_s)
    register_retention(faust_app, db_engine, seen, lake, settings, windows, cache)
    register_commands(faust_app, settings, db_engine, config)
    register_raw_commands(faust_app, settings)
    register_config_commands(faust_app, settings, config)
    register_topic_commands(faust_app, settings)

    async def _on_revoked(sender: object, revoked: set, **kwargs: Any) -> None:
        await sinks.on_revoked(revoked)

    faust_app.on_partitions_revoked.connect(_on_revoked)  # type: ignore[arg-type]
    register_views(faust_app, stats, sinks, cache, seen, windows, config)
    faust_app.sinks = sinks  # type: ignore[attr-defined]
    faust_app.ingest_stats = stats  # type: ignore[attr-defined]
    faust_app.config_manager = config  # type: ignore[attr-defined]
    return faust_app


def __getattr__(name: str) -> Any:
    if name == "app":
        built = build(get_settings())
        globals()["app"] = built
        return built
    raise AttributeError(f"module 'app' has no attribute {name!r}")
