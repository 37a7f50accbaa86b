"""Periodic jobs: retention in PostgreSQL and the lake, expiry of table state.

* Rows past their table's retention (:data:`storage.retention.RETENTION`:
  ``failed_items`` 180 days, ``normalized_transactions`` and ``dynamic_metrics``
  365, ``aggregate_histograms`` 730; the transaction claims with the transactions'
  period) and lake day folders older than
  ``LAKE_RETENTION_DAYS`` (90) are deleted every ``RETENTION_INTERVAL_S``, by the
  leader worker only (one delete, not N).
* Expired entries of the ``seen-transactions`` table, and windows that ended
  ``WINDOW_RETENTION_S`` before their partition's stream time, are deleted every
  ``DEDUPE_PURGE_INTERVAL_S`` by each worker, for the partitions it owns.
* Free pages of the C heap go back to the system every 30 s, on each worker (ADR 0011).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from runtime.faust_app import PaymentApp, trim_malloc
from runtime.settings import Settings
from runtime.topics import PAYMENTS
from storage.compaction import compact
from storage.parquet import RawEventWriter
from storage.retention import purge_claims, purge_database, purge_lake
from tables.context import placeholder_message
from tables.payments import WindowState
from tables.seen import SeenIds

log = logging.getLogger(__name__)
TRIM_INTERVAL_S = 30.0  # how often glibc's free pages go back to the system


def register_retention(app: PaymentApp, engine: Engine, seen: SeenIds, lake: RawEventWriter,
                       settings: Settings, windows: WindowState) -> None:
    @app.timer(interval=settings.retention_interval_s, on_leader=True)
    async def retention() -> None:
        try:
            await asyncio.to_thread(purge_database, engine, settings)
            await asyncio.to_thread(purge_claims, engine, settings)
        except Exception:  # the next run tries again; the worker keeps consuming
            log.exception("database retention run failed")
        try:
            await asyncio.to_thread(purge_lake, lake.table, settings.lake_retention_days)
        except Exception:
            log.exception("lake retention run failed")

    @app.timer(interval=settings.lake_optimize_interval_s, on_leader=True)
    async def lake_optimize() -> None:
        before = datetime.now(UTC) - timedelta(hours=2)
        try:
            report = await asyncio.to_thread(compact, lake.table, before=before,
                                             target_mb=settings.lake_optimize_target_mb)
        except Exception:  # the next run tries again; the worker keeps consuming
            log.exception("lake compaction failed")
            return
        if report["removed"]:
            log.info("lake compaction: %d files into %d", report["removed"], report["added"])

    @app.timer(interval=TRIM_INTERVAL_S)
    async def trim_memory() -> None:
        await asyncio.to_thread(trim_malloc)

    @app.timer(interval=settings.dedupe_purge_interval_s)
    async def seen_ids_expiry() -> None:
        actives = {tp.partition for tp in app.assignor.assigned_actives()
                   if tp.topic == PAYMENTS}
        if actives:
            await seen.purge_async(actives, lambda p: placeholder_message(PAYMENTS, p),
                                   time.time())
            windows.expire(actives, settings.window_retention_s)
