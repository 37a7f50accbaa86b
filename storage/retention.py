"""Retention: old rows out of PostgreSQL, old partitions out of the lake.

Rows go in small batches, so a large backlog (the first run after an outage,
say) never holds locks for long or bloats one transaction. The lake drops
whole ``date=YYYY-MM-DD`` folders, so retention is a listing and a few
deletes, on a local directory or on Blob Storage alike.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine, text

from storage.delta import RawTable

log = logging.getLogger(__name__)

# Every table with a retention period, in one place: table -> (time column, setting).
# Each time column is indexed (alembic 0001-0003), so a batch is an index range scan.
RETENTION = {
    "failed_items": ("created_at", "failed_retention_days"),  # 180 days by default
    "normalized_transactions": ("event_time", "transactions_retention_days"),  # 365
    "dynamic_metrics": ("created_at", "metrics_retention_days"),  # 365
    "aggregate_histograms": ("time_window", "histograms_retention_days"),  # 730
    "histogram_partials": ("window_start", "histograms_retention_days"),  # 730
    "rebuilt_windows": ("window_start", "histograms_retention_days"),  # with its rows
}


# The duplicate check's claims (storage/claims.py) go with the transactions' period, by
# the time they were claimed: a claim outlives the row it stands for, which is dated by
# its (earlier) event time.
CLAIMS_RETENTION = {"transaction_claims": ("claimed_at", "transactions_retention_days")}


def purge_table(engine: Engine, table: str, days: int, *, now: datetime | None = None,
                batch: int = 10_000) -> int:
    """Delete rows of ``table`` (a key of :data:`RETENTION` or :data:`CLAIMS_RETENTION`)
    older than ``days`` days, ``batch`` rows per transaction; returns how many."""
    column, _ = {**RETENTION, **CLAIMS_RETENTION}[table]  # names from here, never input
    statement = text(f"DELETE FROM {table} WHERE ctid IN ("  # noqa: S608
                     f"SELECT ctid FROM {table} WHERE {column} < :cutoff LIMIT :batch)")
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(statement, {"cutoff": cutoff, "batch": batch}).rowcount
        total += deleted
        if deleted < batch:
            break
    if total:
        log.info("retention: deleted %d %s rows older than %d days", total, table, days)
    return total


def purge_failed_items(engine: Engine, days: int, *, now: datetime | None = None,
                       batch: int = 10_000) -> int:
    """Delete ``failed_items`` rows created more than ``days`` days ago; returns how many."""
    return purge_table(engine, "failed_items", days, now=now, batch=batch)


class RetentionDays(Protocol):
    """The retention periods (``runtime.settings.Settings`` has them)."""

    @property
    def failed_retention_days(self) -> int: ...

    @property
    def transactions_retention_days(self) -> int: ...

    @property
    def metrics_retention_days(self) -> int: ...

    @property
    def histograms_retention_days(self) -> int: ...


def purge_database(engine: Engine, settings: RetentionDays, *,
                   now: datetime | None = None) -> dict[str, int]:
    """Apply every retention period of :data:`RETENTION`; returns rows deleted per table."""
    return {table: purge_table(engine, table, getattr(settings, setting), now=now)
            for table, (_, setting) in RETENTION.items()}


def purge_claims(engine: Engine, settings: RetentionDays, *,
                 now: datetime | None = None) -> int:
    """Delete the transaction claims older than the transactions' retention period."""
    return purge_table(engine, "transaction_claims", settings.transactions_retention_days,
                       now=now)


def purge_lake(table: RawTable, days: int, *, now: datetime | None = None) -> tuple[int, int]:
    """Delete the lake's rows of the dates wholly older than ``days`` days, then vacuum the
    files no table version of the last day needs; returns (rows deleted, files removed).

    A date is deleted when it is before today minus ``days`` (UTC), so the newest deleted
    day ended at least ``days`` days ago. The delete is a Delta commit: a reader sees the
    rows before or after it, never half of it.
    """
    deleted, removed = table.purge(days, now=now)
    if deleted or removed:
        log.info("lake retention: deleted %d rows older than %d days, vacuumed %d files",
                 deleted, days, removed)
    return deleted, removed
