"""Retention: delete rows older than their table's retention, in small batches.

Small batches keep each transaction short, so a large backlog (the first run
after an outage, say) never holds locks for long or bloats one transaction.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

log = logging.getLogger(__name__)

DELETE_FAILED_BATCH = text("""
DELETE FROM failed_items WHERE id IN (
    SELECT id FROM failed_items WHERE created_at < :cutoff ORDER BY id LIMIT :batch
)
""")


def purge_failed_items(engine: Engine, days: int, *, now: datetime | None = None,
                       batch: int = 10_000) -> int:
    """Delete ``failed_items`` rows created more than ``days`` days ago; returns how many."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(DELETE_FAILED_BATCH, {"cutoff": cutoff, "batch": batch}).rowcount
        total += deleted
        if deleted < batch:
            break
    if total:
        log.info("retention: deleted %d failed_items rows older than %d days", total, days)
    return total
