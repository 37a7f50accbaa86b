"""Retention: old rows out of PostgreSQL, old partitions out of the lake.

Rows go in small batches, so a large backlog (the first run after an outage,
say) never holds locks for long or bloats one transaction. The lake drops
whole ``date=YYYY-MM-DD`` folders, so retention is a listing and a few
deletes, on a local directory or on Blob Storage alike.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

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


def purge_lake(fs: Any, root: str, days: int, *, now: datetime | None = None) -> list[str]:
    """Delete the lake's ``date=`` folders wholly older than ``days`` days; returns them.

    A folder is deleted when its date is before today minus ``days`` (UTC), so
    the newest deleted day ended at least ``days`` days ago.
    """
    cutoff = ((now or datetime.now(UTC)) - timedelta(days=days)).date()
    root = root.rstrip("/")
    if not fs.exists(root):
        return []
    removed = []
    for path in sorted(fs.ls(root, detail=False)):
        name = path.rstrip("/").rsplit("/", 1)[-1]
        if not name.startswith("date="):
            continue
        try:
            day = datetime.strptime(name[len("date="):], "%Y-%m-%d").date()
        except ValueError:
            log.warning("lake retention: skipping %s (not a date)", path)
            continue
        if day < cutoff:
            fs.rm(path, recursive=True)
            removed.append(path)
    if removed:
        log.info("lake retention: deleted %d day folders older than %d days", len(removed), days)
    return removed
