"""Transaction ids already accepted, per source partition: the duplicate check's state.

Table ``seen-transactions`` (RocksDB, changelog partitioned like ``payments``)
maps ``"<partition>|<transaction_id>"`` to ``[offset, received_ts]``: where the
id was first accepted and the broker timestamp of that record. A later record
with the same id at another offset is a duplicate; the same record delivered
again after a crash (same offset) is not.

The scope is the source partition, that is the merchant (the message key):
the same id under two merchants is not caught here (``normalized_transactions``
keeps the first, the windows would count both; see docs/errors.md).

Entries expire ``expiry`` seconds after they were seen, measured on broker
timestamps: an expired entry no longer makes a duplicate, and the periodic
:meth:`SeenIds.purge` deletes expired entries (a tombstone each) so the store
and the compacted changelog stop growing.

Writes go through a write-back cache flushed before each commit, like
:class:`tables.cache.WindowCache`: a crash before the commit replays the
records, which find their own offsets again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from faust.types import Message, TableT

from app.batching import partition_context

log = logging.getLogger(__name__)
TABLE_NAME = "seen-transactions"


def declare_seen_table(app: Any) -> TableT:
    return app.Table(TABLE_NAME, default=None, partitions=app.settings.topic_partitions,
                     help="accepted transaction ids per source partition: [offset, seen at]")


class SeenIds:
    """Looks up and records accepted transaction ids; flushed before each commit."""

    def __init__(self, app: Any, table: TableT, expiry: float) -> None:
        self.app = app
        self.table = table
        self.expiry = expiry
        self._dirty: dict[int, dict[str, list[float]]] = {}
        self.purged = 0

    def first_seen(self, partition: int, tx_id: str, now: float) -> int | None:
        """The offset where ``tx_id`` was accepted, unless unknown or expired."""
        key = f"{partition}|{tx_id}"
        dirty = self._dirty.get(partition)
        entry = dirty.get(key) if dirty is not None else None
        if entry is None:
            entry = self.table.get(key)
            if entry is None:
                return None
        offset, seen_at = entry
        if now - seen_at > self.expiry:
            return None
        return int(offset)

    def add(self, partition: int, tx_id: str, offset: int, now: float) -> None:
        self._dirty.setdefault(partition, {})[f"{partition}|{tx_id}"] = [offset, now]

    def flush(self, partition: int, message: Message) -> int:
        """Write the partition's new ids to the table (and its changelog)."""
        dirty = self._dirty.pop(partition, None)
        if not dirty:
            return 0
        with partition_context(self.app, message):
            for key, value in dirty.items():
                self.table[key] = value
        return len(dirty)

    def forget(self, partition: int) -> None:
        self._dirty.pop(partition, None)

    async def purge(self, partitions: set[int], message_for: Any, now: float | None = None,
                    limit: int = 100_000) -> int:
        """Delete up to ``limit`` expired entries of ``partitions`` (this worker's actives).

        ``message_for(partition)`` gives a message of that partition, which sets
        the changelog partition of each tombstone. Standby copies are left alone:
        their owner purges them.
        """
        cutoff = (now or time.time()) - self.expiry
        expired: dict[int, list[str]] = {}
        n = 0
        for scanned, (key, value) in enumerate(self.table.items()):
            if scanned % 5000 == 4999:
                await asyncio.sleep(0)  # a long scan must not stall the fetch loop
            if value is not None and value[1] < cutoff:
                partition = int(str(key).split("|", 1)[0])
                if partition not in partitions:
                    continue
                expired.setdefault(partition, []).append(key)
                n += 1
                if n >= limit:
                    break
        for partition, keys in expired.items():
            with partition_context(self.app, message_for(partition)):
                for key in keys:
                    del self.table[key]
        self.purged += n
        if n:
            log.info("purged %d expired transaction ids", n)
        return n
