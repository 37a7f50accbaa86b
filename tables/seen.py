"""Transaction ids already accepted, per source partition, and each customer's payments.

Durable state is the table ``seen-transactions`` (RocksDB, changelog
partitioned like ``payments``). Each entry is a *chunk*: the ids one partition
accepted between two commits, at most :data:`CHUNK_IDS` of them, under the key
``"<partition>|<first offset>"`` with the value
``{"ts": newest arrival time, "ids": [[transaction_id, offset, ts, customer_id,
event ts, amount_minor, currency], ...]}``.

Why chunks and not one entry per id: a table write is a changelog record, and
one record per event halved the pipeline's throughput (docs/performance.md,
``python -m benchmarks.pipeline``); a chunk is one record per few thousand
events.

What is held where (memory must not grow with traffic: ADR 0011):

* **Whether an id is new** is decided by PostgreSQL's claims in the worker
  (:meth:`storage.postgres.PostgresSink.claim`). There the ids are not held in
  memory at all (``ids_in_memory=False``). Without claims (unit tests) an
  in-memory index per partition, built from its chunks, answers
  :meth:`SeenIds.first_seen`: a record whose id was accepted before at another
  offset is a duplicate; the same record delivered again (same offset) is not.
* **Each customer's payments** (:meth:`SeenIds.history`), which the compliance
  rules over time read, live on local disk (:class:`~tables.histories.CustomerHistories`,
  rebuilt from the chunks when a partition is assigned), with the newest times of each
  active customer in memory in front (:class:`~tables.histories.RecentTimes`), which
  answer velocity without the disk whenever they are sure to be complete. Payments
  accepted since the last flush are in memory until the flush writes them to the table
  and the disk. docs/adr/0011-bounded-memory.md has the reasons and the figures.

Entries expire ``expiry`` seconds (worker clock) after they were accepted; the
periodic :meth:`SeenIds.purge` deletes chunks whose entries have all expired, and
their payments from the histories. New entries are written before each commit
(:meth:`SeenIds.flush`), so a crash replays records whose ids are not in the table
yet and finds them again.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from pathlib import Path

from faust.types import AppT, Message, TableT

from tables.context import partition_context
from tables.histories import CustomerHistories, Entry, RecentTimes
from tables.histories import Payment as StoredPayment
from tables.stores import rocksdb_options

log = logging.getLogger(__name__)
TABLE_NAME = "seen-transactions"
CHUNK_IDS = 5000  # ids per table value at most ...
# ... and at most this many bytes of JSON, whatever the ids hold: 4,000 contract-valid
# entries with 64-character ids made a 1.9 MB value, which the broker refuses (1 MiB)
CHUNK_BYTES = 512 * 1024
_ENTRY_OVERHEAD = 8  # an entry's brackets and commas ...
_NUMBER_BYTES = 24  # ... and each of its numbers, at most
HISTORIES_DIR = "customer-histories"
EVICT_EVERY_S = 30.0  # how often customers idle for the horizon leave memory


def declare_seen_table(app: AppT, partitions: int) -> TableT:
    return app.Table(TABLE_NAME, default=None, partitions=partitions,
                     help="accepted transaction ids per source partition, in chunks",
                     options=rocksdb_options())


class SeenIds:
    """Looks up and records accepted transaction ids and payments; flushed before each
    commit."""

    def __init__(self, app: AppT, table: TableT, expiry: float, *,
                 ids_in_memory: bool = True, histories: CustomerHistories | None = None,
                 recent_times: RecentTimes | None = None) -> None:
        self.app = app
        self.table = table
        self.expiry = expiry
        self.ids_in_memory = ids_in_memory
        self._histories = histories
        self.recent_times = recent_times or RecentTimes()
        self._evicted_at: dict[int, float] = {}
        self._loaded: set[int] = set()
        self._forgotten: dict[int, int] = {}  # revocations per partition
        self._index: dict[int, dict[str, tuple[int, float]]] = {}
        self._pending: dict[int, list[tuple]] = {}
        self._pending_offsets: dict[int, set[int]] = {}
        # per partition: customer -> payments accepted since the last flush
        self._recent: dict[int, dict[str, list[Entry]]] = {}
        self._chunks: dict[int, deque[tuple[str, float]]] = {}  # (key, newest ts), oldest first
        self.purged = 0

    @property
    def histories(self) -> CustomerHistories:
        """Opened on first use, in the worker: a CLI command that builds the app must not
        touch a running worker's database."""
        if self._histories is None:
            self._histories = CustomerHistories(Path(self.app.conf.tabledir) / HISTORIES_DIR)
        return self._histories

    def first_seen(self, partition: int, tx_id: str, now: float) -> int | None:
        """The offset where ``tx_id`` was accepted, unless unknown or expired (only with
        ``ids_in_memory``)."""
        if partition not in self._loaded:
            self._load(partition)
        entry = self._index.get(partition, {}).get(tx_id)
        if entry is None or now - entry[1] > self.expiry:
            return None
        return entry[0]

    def add(self, partition: int, tx_id: str, offset: int, now: float,
            payment: tuple[str, float, int, str] | None = None) -> None:
        """Record an accepted id; ``payment`` is (customer, event ts, amount_minor, currency)."""
        if partition not in self._loaded:
            self._load(partition)
        if self.ids_in_memory:
            self._index[partition][tx_id] = (offset, now)
        offsets = self._pending_offsets.setdefault(partition, set())
        if offset in offsets:
            return  # delivered again before the flush: added once
        offsets.add(offset)
        if payment is None:
            self._pending.setdefault(partition, []).append((tx_id, offset, now))
            return
        self._pending.setdefault(partition, []).append((tx_id, offset, now, *payment))
        customer, event_ts, amount, currency = payment
        self._recent.setdefault(partition, {}).setdefault(customer, []).append(
            (event_ts, offset, amount, currency))
        self.recent_times.add(partition, customer, event_ts, offset)

    def add_many(self, partition: int, tx_ids: Sequence[str], offsets: Sequence[int],
                 now: float) -> None:
        """:meth:`add` of each id at its offset (no payment), at once when none of the
        offsets is already waiting for the flush."""
        if not tx_ids:
            return
        if partition not in self._loaded:
            self._load(partition)
        waiting = self._pending_offsets.setdefault(partition, set())
        if not waiting.isdisjoint(offsets):  # some delivered again before the flush
            for tx_id, offset in zip(tx_ids, offsets, strict=True):
                self.add(partition, tx_id, offset, now)
            return
        if self.ids_in_memory:
            self._index[partition].update(zip(tx_ids, zip(offsets, repeat(now)), strict=False))
        waiting.update(offsets)
        self._pending.setdefault(partition, []).extend(zip(tx_ids, offsets, repeat(now)))

    def history(self, partition: int, customer: str) -> CustomerHistory:
        """The customer's payments accepted in ``partition`` within the dedupe window."""
        if partition not in self._loaded:
            self._load(partition)
        recent = self._recent.get(partition)
        return CustomerHistory(self.histories, self.recent_times, partition, customer,
                               recent.get(customer) if recent else None)

    def flush(self, partition: int, message: Message) -> int:
        """Write the partition's new entries to the table (and its changelog), in
        chunks, and their payments to the histories."""
        pending = self._pending.pop(partition, None)
        self._pending_offsets.pop(partition, None)
        self._recent.pop(partition, None)
        now = time.monotonic()
        if now - self._evicted_at.setdefault(partition, now) >= EVICT_EVERY_S:
            self.recent_times.evict(partition)
            self._evicted_at[partition] = now
        if not pending:
            return 0
        if any(len(entry) > 3 for entry in pending):  # entries with their payment
            self.histories.put(partition, _payments(pending))
        chunks = self._chunks.setdefault(partition, deque())
        with partition_context(self.app, message):
            for part in _chunked(pending):
                key = f"{partition}|{part[0][1]}"
                newest = max(entry[2] for entry in part)
                self.table[key] = {"ts": newest, "ids": [list(entry) for entry in part]}
                chunks.append((key, newest))
        return len(pending)

    def forget(self, partition: int) -> None:
        """Drop a revoked partition's state; the next owner loads it from the table."""
        self._forgotten[partition] = self._forgotten.get(partition, 0) + 1
        self._loaded.discard(partition)
        self._index.pop(partition, None)
        self._pending.pop(partition, None)
        self._pending_offsets.pop(partition, None)
        self._recent.pop(partition, None)
        self._chunks.pop(partition, None)
        self.recent_times.drop(partition)
        if self._histories is not None:
            self._histories.drop(partition)

    def loaded(self, partition: int) -> bool:
        return partition in self._loaded

    async def load(self, partition: int) -> bool:
        """Load ``partition`` from the table a chunk at a time, giving the event loop a
        turn after each (heartbeats, the web, the sinks): a partition's hour of payments
        takes seconds to rebuild. False if the partition was revoked meanwhile."""
        forgotten = self._forgotten.get(partition, 0)
        for _ in self._loading(partition):
            await asyncio.sleep(0)
            if self._forgotten.get(partition, 0) != forgotten:
                return False
        return True

    def _load(self, partition: int) -> None:
        for _ in self._loading(partition):
            pass

    def _loading(self, partition: int) -> Iterator[None]:
        prefix = f"{partition}|"
        found = []
        for key in self.table:
            if str(key).startswith(prefix):
                found.append((int(str(key).split("|", 1)[1]), str(key)))
        found.sort()
        index: dict[str, tuple[int, float]] = {}
        chunks: deque[tuple[str, float]] = deque()
        self.histories.drop(partition)
        self.recent_times.drop(partition)
        loaded = 0
        for _, key in found:
            value = self.table.get(key)
            if value is None:
                continue
            entries = [_split_entry(entry) for entry in value["ids"]]
            if self.ids_in_memory:
                for tx_id, offset, ts, _ in entries:
                    index[tx_id] = (offset, ts)
            self.histories.put(partition, _stored(entries))
            for customer, event_ts, offset, _, _ in _stored(entries):
                self.recent_times.add(partition, customer, event_ts, offset)
            chunks.append((key, float(value["ts"])))
            loaded += len(entries)
            yield
        self._index[partition] = index
        self._chunks[partition] = chunks
        self._recent.pop(partition, None)
        self._loaded.add(partition)
        if loaded:
            log.info("loaded %d seen transaction ids of partition %d", loaded, partition)

    def size(self) -> int:
        """Ids held in memory (none when PostgreSQL's claims decide)."""
        return sum(len(index) for index in self._index.values())

    def purge(self, partitions: Iterable[int], message_for: Callable[[int], Message],
              now: float) -> int:
        """Delete the chunks of ``partitions`` whose ids have all expired; returns ids dropped.

        ``message_for(partition)`` gives a message of that partition, which sets
        the changelog partition of each tombstone.
        """
        return max(self._purging(partitions, message_for, now), default=0)

    async def purge_async(self, partitions: Iterable[int], message_for: Callable[[int], Message],
                          now: float) -> int:
        """:meth:`purge`, giving the event loop a turn after each chunk: a purge is about
        13 µs of CPU per id (`python -m benchmarks.purge`), so ten minutes of ids at
        5,000/s would otherwise hold every batch, probe and heartbeat of the loop for
        tens of seconds. A partition revoked meanwhile is left to its next owner."""
        dropped = 0
        for so_far in self._purging(partitions, message_for, now):
            dropped = so_far
            await asyncio.sleep(0)
        return dropped

    def _purging(self, partitions: Iterable[int], message_for: Callable[[int], Message],
                 now: float) -> Iterator[int]:
        """Purge a chunk per step; yields the ids dropped so far after each."""
        cutoff = now - self.expiry
        dropped = 0
        for partition in partitions:
            chunks = self._chunks.get(partition)
            if not chunks or partition not in self._loaded:
                continue
            revocations = self._forgotten.get(partition, 0)
            index = self._index.get(partition, {})
            while chunks and chunks[0][1] < cutoff:
                if self._forgotten.get(partition, 0) != revocations:
                    break  # revoked since the last step: its tombstones are not ours to write
                key, _ = chunks.popleft()
                with partition_context(self.app, message_for(partition)):
                    value = self.table.get(key)
                    del self.table[key]
                entries = [_split_entry(item) for item in (value or {}).get("ids", [])]
                for tx_id, offset, _, _ in entries:
                    entry = index.get(tx_id)
                    if entry is not None and entry[0] == offset:
                        del index[tx_id]
                self.histories.delete(partition, _stored(entries))
                dropped += len(entries)
                self.purged += len(entries)
                yield dropped
        if dropped:
            log.info("expired %d transaction ids", dropped)


class CustomerHistory:
    """One customer's payments in one partition for the rules
    (:class:`pipeline.metrics.PaymentHistory`): those since the last flush, from
    memory, then the rest from disk. A payment delivered again after a rebalance may be
    in both; it is counted once (by offset)."""

    __slots__ = ("_store", "_times", "_partition", "_customer", "_recent")

    def __init__(self, store: CustomerHistories, times: RecentTimes, partition: int,
                 customer: str, recent: list[Entry] | None) -> None:
        self._store, self._times = store, times
        self._partition, self._customer = partition, customer
        self._recent = recent

    def times(self, low: float, high: float) -> Iterable[tuple[float, int]]:
        """``(event ts, offset)`` in ``[low, high]``: from memory when it has them all
        (:class:`~tables.histories.RecentTimes`); else what memory has, then the rest
        from disk, read only if the caller goes on past memory's (the velocity rule
        stops as soon as it has seen enough)."""
        found = self._times.times(self._partition, self._customer, low, high)
        if found is not None:
            return found
        return _memory_then_disk(self._times.some(self._partition, self._customer, low, high),
                                 self, low, high)

    def between(self, low: float, high: float) -> Iterable[Entry]:
        stored = self._store.between(self._partition, self._customer, low, high)
        recent = self._recent and [e for e in self._recent if low <= e[0] <= high]
        return _merged(recent, stored) if recent else stored

    def amounts(self, currency: str, low: float, high: float) -> Iterable[Entry]:
        stored = self._store.amounts(self._partition, self._customer, currency, low, high)
        recent = self._recent and [e for e in self._recent
                                   if e[3] == currency and low <= e[2] < high]
        return _merged(recent, stored) if recent else stored


def _memory_then_disk(found: list[tuple[float, int]], history: CustomerHistory,
                      low: float, high: float) -> Iterator[tuple[float, int]]:
    yield from found
    offsets = {offset for _, offset in found}
    for entry in history.between(low, high):
        if entry[1] not in offsets:
            yield entry[0], entry[1]


def _merged(recent: list[Entry], stored: Iterator[Entry]) -> Iterator[Entry]:
    yield from recent
    offsets = {e[1] for e in recent}
    for entry in stored:
        if entry[1] not in offsets:
            yield entry


def _payments(pending: list[tuple]) -> Iterator[StoredPayment]:
    """The payments among pending entries, as the histories store them."""
    for entry in pending:
        if len(entry) > 3:
            tx_id, offset, now, customer, event_ts, amount, currency = entry
            yield customer, event_ts, offset, amount, currency


def _stored(entries: list[tuple[str, int, float, Payment | None]]) -> Iterator[StoredPayment]:
    for _, offset, _, payment in entries:
        if payment is not None:
            customer, event_ts, amount, currency = payment
            yield customer, event_ts, offset, amount, currency


def _chunked(entries: list[tuple]) -> list[list[tuple]]:
    """``entries`` cut into runs of at most :data:`CHUNK_IDS` entries and
    :data:`CHUNK_BYTES` bytes of JSON (an upper bound per entry, so no table value,
    hence no changelog record, can outgrow the broker's limit).

    A run of :data:`CHUNK_IDS` entries whose bound, taken a field at a time for all of
    them (:func:`_run_bound`), is within :data:`CHUNK_BYTES` is one chunk, as
    :func:`_chunked_each` would make it; from the first run that is not, that does."""
    chunks: list[list[tuple]] = []
    for start in range(0, len(entries), CHUNK_IDS):
        run = entries[start:start + CHUNK_IDS]
        if _run_bound(run) > CHUNK_BYTES:
            return chunks + _chunked_each(entries[start:])
        chunks.append(run)
    return chunks


def _run_bound(run: list[tuple]) -> float:
    """At least the sum of the entries' bounds in :func:`_chunked_each` (infinite when the
    entries differ in shape): a field's texts joined are bounded as one text, which counts
    each escape that one entry's text needs for all of them at most."""
    if len(set(map(len, run))) != 1:
        return math.inf
    total = _ENTRY_OVERHEAD * len(run)
    for column in zip(*run, strict=True):
        kinds = set(map(type, column))
        if kinds <= {int, float}:
            total += _NUMBER_BYTES * len(column)
        elif kinds == {str}:
            total += _json_bound("".join(column)) - 2 + 2 * len(column)
        else:
            return math.inf
    return total


def _chunked_each(entries: list[tuple]) -> list[list[tuple]]:
    """:func:`_chunked` an entry at a time."""
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


def _split_entry(entry: list) -> tuple[str, int, float, Payment | None]:
    """One stored id: ``[transaction_id, offset, ts]``, followed by the payment's details
    (:data:`Payment`) in chunks written since they feed the compliance history."""
    tx_id, offset, ts, *payment = entry
    details = ((payment[0], float(payment[1]), int(payment[2]), payment[3])
               if payment else None)
    return tx_id, int(offset), float(ts), details
