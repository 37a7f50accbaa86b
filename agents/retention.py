"""Periodic jobs: ``failed_items`` retention and expiry of seen transaction ids.

* ``failed_items`` older than ``FAILED_RETENTION_DAYS`` (default 180) and lake day
  folders older than ``LAKE_RETENTION_DAYS`` (90) are deleted every
  ``RETENTION_INTERVAL_S``, by the leader worker only (one delete, not N).
* Expired entries of the ``seen-transactions`` table are deleted every
  ``DEDUPE_PURGE_INTERVAL_S`` by each worker, for the partitions it owns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from sqlalchemy import Engine

from app.batching import placeholder_message
from app.faust_app import PaymentApp
from app.topics import PAYMENTS
from storage.parquet import RawEventWriter
from storage.retention import purge_failed_items, purge_lake
from tables.seen import SeenIds

log = logging.getLogger(__name__)


def register_retention(app: PaymentApp, engine: Engine, seen: SeenIds, lake: RawEventWriter,
                       settings: Any) -> None:
    @app.timer(interval=settings.retention_interval_s, on_leader=True)
    async def retention() -> None:
        try:
            await asyncio.to_thread(purge_failed_items, engine, settings.failed_retention_days)
        except Exception:  # the next run tries again; the worker keeps consuming
            log.exception("failed_items retention run failed")
        try:
            await asyncio.to_thread(purge_lake, lake.fs, lake.root, settings.lake_retention_days)
        except Exception:
            log.exception("lake retention run failed")

    @app.timer(interval=settings.dedupe_purge_interval_s)
    async def seen_ids_expiry() -> None:
        actives = {tp.partition for tp in app.assignor.assigned_actives()
                   if tp.topic == PAYMENTS}
        if actives:
            seen.purge(actives, lambda p: placeholder_message(PAYMENTS, p), time.time())
