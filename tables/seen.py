"""Transaction ids already accepted, per source partition: the duplicate check's state.

Durable state is the table ``seen-transactions`` (RocksDB, changelog
partitioned like ``payments``). Each entry is a *chunk*: the ids one partition
accepted between two commits, at most :data:`CHUNK_IDS` of them, under the key
``"<partition>|<first offset>"`` with the value
``{"ts": newest broker timestamp, "ids": [[transaction_id, offset, ts, customer_id,
event ts, amount_minor, currency], ...]}``.
Lookups use an in-memory index per partition, built from that partition's
chunks the first time the partition is seen after an assignment.

Why chunks and not one entry per id: a table write is a changelog record, and
one record per event halved the pipeline's throughput (docs/performance.md,
``python -m benchmarks.pipeline``); a chunk is one record per few thousand
events. The price is memory: the index holds every id of the dedupe window
(about 200 bytes each; docs/errors.md has the sizing).

Semantics: a record whose id was accepted before at another offset is a
duplicate; the same record delivered again after a crash (same offset) is not.
The scope is the source partition, that is the merchant (the message key).

The same entries give each customer's recent payments (:meth:`SeenIds.history`),
which the compliance rules over time (velocity, structuring) read: one
journal of the partition's accepted payments serves both.
Ids expire ``expiry`` seconds (broker time) after they were accepted; the
periodic :meth:`SeenIds.purge` deletes chunks whose ids have all expired.
New ids are written before each commit (:meth:`SeenIds.flush`), so a crash
replays records whose ids are not in the table yet and finds them again.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

from faust.types import AppT, Message, TableT

from pipeline.metrics import SortedHistory
from tables.context import partition_context

log = logging.getLogger(__name__)
TABLE_NAME = "seen-transactions"
CHUNK_IDS = 5000  # ids per table value at most ...
# ... and at most this many bytes of JSON, whatever the ids hold: 4,000 contract-valid
# entries with 64-character ids made a 1.9 MB value, which the broker refuses (1 MiB)
CHUNK_BYTES = 512 * 1024
_ENTRY_OVERHEAD = 8  # an entry's brackets and commas ...
_NUMBER_BYTES = 24  # ... and each of its numbers, at most


def declare_seen_table(app: AppT, partitions: int) -> TableT:
    return app.Table(TABLE_NAME, default=None, partitions=partitions,
                     help="accepted transaction ids per source partition, in chunks")


class SeenIds:
    """Looks up and records accepted transaction ids; flushed before each commit."""

    def __init__(self, app: AppT, table: TableT, expiry: float) -> None:
        self.app = app
        self.table = table
        self.expiry = expiry
        self._index: dict[int, dict[str, tuple[int, float]]] = {}
        self._pending: dict[int, list[tuple]] = {}
        # per partition: customer -> [(event ts, offset, amount_minor, currency)], oldest first
        self._customers: dict[int, dict[str, SortedHistory]] = {}
        self._chunks: dict[int, deque[tuple[str, float]]] = {}  # (key, newest ts), oldest first
        self.purged = 0

    def first_seen(self, partition: int, tx_id: str, now: float) -> int | None:
        """The offset where ``tx_id`` was accepted, unless unknown or expired."""
        index = self._index.get(partition)
        if index is None:
            index = self._load(partition)
        entry = index.get(tx_id)
        if entry is None or now - entry[1] > self.expiry:
            return None
        return entry[0]

    def add(self, partition: int, tx_id: str, offset: int, now: float,
            payment: tuple[str, float, int, str] | None = None) -> None:
        """Record an accepted id; ``payment`` is (customer, event ts, amount_minor, currency)."""
        self._index[partition][tx_id] = (offset, now)
        if payment is None:
            self._pending.setdefault(partition, []).append((tx_id, offset, now))
            return
        self._pending.setdefault(partition, []).append((tx_id, offset, now, *payment))
        customer, event_ts, amount, currency = payment
        history = self._customers[partition].get(customer)
        if history is None:
            history = self._customers[partition][customer] = SortedHistory()
        history.add((event_ts, offset, amount, currency))

    def history(self, partition: int, customer: str) -> SortedHistory:
        """The customer's payments accepted in ``partition`` within the dedupe window,
        sorted by event time."""
        customers = self._customers.get(partition)
        if customers is None:
            self._load(partition)
            customers = self._customers[partition]
        return customers.get(customer, _NO_HISTORY)

    def flush(self, partition: int, message: Message) -> int:
        """Write the partition's new ids to the table (and its changelog), in chunks."""
        pending = self._pending.pop(partition, None)
        if not pending:
            return 0
        chunks = self._chunks.setdefault(partition, deque())
        with partition_context(self.app, message):
            for part in _chunked(pending):
                key = f"{partition}|{part[0][1]}"
                newest = max(entry[2] for entry in part)
                self.table[key] = {"ts": newest, "ids": [list(entry) for entry in part]}
                chunks.append((key, newest))
        return len(pending)

    def forget(self, partition: int) -> None:
        """Drop a revoked partition's ids; the next owner loads them from the table."""
        self._index.pop(partition, None)
        self._pending.pop(partition, None)
        self._chunks.pop(partition, None)
        self._customers.pop(partition, None)

    def _load(self, partition: int) -> dict[str, tuple[int, float]]:
        prefix = f"{partition}|"
        found = []
        for key, value in self.table.items():
            if value is not None and str(key).startswith(prefix):
                found.append((int(str(key).split("|", 1)[1]), str(key), value))
        found.sort()
        index: dict[str, tuple[int, float]] = {}
        customers: dict[str, SortedHistory] = {}
        chunks: deque[tuple[str, float]] = deque()
        for _, key, value in found:
            for entry in value["ids"]:
                tx_id, offset, ts, payment = _split_entry(entry)
                index[tx_id] = (offset, ts)
                if payment is not None:
                    customer, event_ts, amount, currency = payment
                    customers.setdefault(customer, SortedHistory()).append(
                        (event_ts, offset, amount, currency))
            chunks.append((key, float(value["ts"])))
        for history in customers.values():
            history.sort()
        self._index[partition] = index
        self._customers[partition] = customers
        self._chunks[partition] = chunks
        if index:
            log.info("loaded %d seen transaction ids of partition %d", len(index), partition)
        return index

    def _drop_history(self, partition: int, dropped: dict[str, set[int]]) -> None:
        """Drop the expired payments (customer -> offsets) from the histories: one pass
        per customer, however many of its payments expire."""
        customers = self._customers.get(partition, {})
        for customer, offsets in dropped.items():
            entries = customers.get(customer)
            if entries is None:
                continue
            kept = SortedHistory(e for e in entries if e[1] not in offsets)
            if kept:
                customers[customer] = kept
            else:
                del customers[customer]

    def size(self) -> int:
        return sum(len(index) for index in self._index.values())

    def purge(self, partitions: set[int], message_for: Callable[[int], Message],
              now: float) -> int:
        """Delete the chunks of ``partitions`` whose ids have all expired; returns ids dropped.

        ``message_for(partition)`` gives a message of that partition, which sets
        the changelog partition of each tombstone.
        """
        cutoff = now - self.expiry
        dropped = 0
        for partition in partitions:
            chunks = self._chunks.get(partition)
            index = self._index.get(partition)
            if not chunks or index is None:
                continue
            expired: dict[str, set[int]] = {}
            with partition_context(self.app, message_for(partition)):
                while chunks and chunks[0][1] < cutoff:
                    key, _ = chunks.popleft()
                    value = self.table.get(key)
                    del self.table[key]
                    for item in (value or {}).get("ids", []):
                        tx_id, offset, _, payment = _split_entry(item)
                        entry = index.get(tx_id)
                        if entry is not None and entry[0] == offset:
                            del index[tx_id]
                            dropped += 1
                        if payment is not None:
                            expired.setdefault(payment[0], set()).add(offset)
            self._drop_history(partition, expired)
        self.purged += dropped
        if dropped:
            log.info("expired %d transaction ids", dropped)
        return dropped


def _chunked(entries: list[tuple]) -> list[list[tuple]]:
    """``entries`` cut into runs of at most :data:`CHUNK_IDS` entries and
    :data:`CHUNK_BYTES` bytes of JSON (an upper bound per entry, so no table value,
    hence no changelog record, can outgrow the broker's limit)."""
    chunks: list[list[tuple]] = []
    part: list[tuple] = []
    size = 0
    for entry in entries:
        cost = _ENTRY_OVERHEAD + sum(_json_bound(v) if isinstance(v, str) else _NUMBER_BYTES
                                     for v in entry)
        if part and (len(part) >= CHUNK_IDS or size + cost > CHUNK_BYTES):
            chunks.append(part)
            part, size = [], 0
        part.append(entry)
        size += cost
    if part:
        chunks.append(part)
    return chunks


def _json_bound(text: str) -> int:
    """Bytes ``text`` takes in JSON at most: printable ASCII as it is (quotes and
    backslashes escaped in two), anything else as a six-byte escape per character."""
    if text.isascii() and text.isprintable():
        return (2 if '"' in text or "\\" in text else 1) * len(text) + 2
    return 6 * len(text) + 2


Payment = tuple[str, float, int, str]  # (customer_id, event ts, amount_minor, currency)
_NO_HISTORY = SortedHistory()  # what history() answers for a new customer; never added to


def _split_entry(entry: list) -> tuple[str, int, float, Payment | None]:
    """One stored id: ``[transaction_id, offset, ts]``, followed by the payment's details
    (:data:`Payment`) in chunks written since they feed the compliance history."""
    tx_id, offset, ts, *payment = entry
    details = ((payment[0], float(payment[1]), int(payment[2]), payment[3])
               if payment else None)
    return tx_id, int(offset), float(ts), details
