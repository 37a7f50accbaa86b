"""Each customer's recent payments, on local disk (RocksDB), for the rules over time.

The velocity and structuring rules look at a customer's earlier payments in the
partition. Held in Python they cost about 230 bytes a payment: at 8,000 payments/s
and a one-hour window that is gigabytes. Here they live in one RocksDB
database per worker (rocksdict, the binding Faust's stores use), under two keys
per payment:

* by time: ``t | partition | customer | event time (µs) | offset``, for velocity;
* by amount: ``a | partition | customer | currency | amount | event time | offset``,
  for structuring, which wants only the amounts just under a threshold.

Both keys map to the payment's exact values (event ts as a float, amount, currency),
so the rules see the same numbers as before. The database is a cache of the
``seen-transactions`` table, which is the durable record (changelogged): it is
emptied when the worker starts and a partition's range is rebuilt from the table
when the partition is assigned (:meth:`tables.seen.SeenIds._load`). So it needs
no write-ahead log, and its memory is bounded (write buffers and a block cache of a
few MiB) whatever the traffic.
"""

from __future__ import annotations

import math
import shutil
import struct
import sys
import uuid
from array import array
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

from rocksdict import (
    BlockBasedIndexType,
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    RdictIter,
    ReadOptions,
    SliceTransform,
    WriteBatch,
    WriteOptions,
)

from tables.stores import rocksdb_memory

Entry = tuple[float, int, int, str]  # (event ts, offset, amount_minor, currency)
Payment = tuple[str, float, int, int, str]  # (customer, event ts, offset, amount, currency)

WRITE_BUFFER_BYTES = 4 << 20
MAX_WRITE_BUFFERS = 2
BLOCK_CACHE_BYTES = 16 << 20

# key kind, partition, the customer id's hash (this process's: the database lives no longer)
# and its length in bytes; the id itself follows, so two ids with one hash stay apart
_HEAD = struct.Struct(">HQH")  # after the one-byte kind
_PREFIX = 11  # kind, partition and hash: what the prefix Bloom filters are built on
_TIME = struct.Struct(">QQ")  # event time (µs, biased), offset
_AMOUNT = struct.Struct(">QQQ")  # amount (biased), event time (µs, biased), offset
_VALUE = struct.Struct("<dqq")  # event ts, offset, amount; the currency follows
_BIAS = 1 << 63
_LAST = (1 << 64) - 1
_TIME_KIND, _AMOUNT_KIND = b"t", b"a"


def _micros(ts: float) -> int:
    """An event time as a key: whole µs, biased to sort as unsigned (event times are
    finite; years 1-9999 are far inside 64 bits)."""
    return min(max(math.floor(ts * 1_000_000) + _BIAS, 0), _LAST)


def _biased(amount: int) -> int:
    return min(max(amount + _BIAS, 0), _LAST)


def _int64(n: int) -> int:
    """Amounts beyond 64 bits are clamped: every threshold is far below, so no
    rule's verdict changes."""
    return min(max(n, -_BIAS), _BIAS - 1)


def _customer(partition: int, customer: str) -> bytes:
    """The key's customer part, after its kind byte."""
    raw = customer.encode()
    return _HEAD.pack(partition, hash(customer) & _LAST, len(raw)) + raw


def _value(ts: float, offset: int, amount: int, currency: str) -> bytes:
    return _VALUE.pack(ts, offset, _int64(amount)) + currency.encode()


def _entry(value: bytes, _unpack=_VALUE.unpack_from, _size=_VALUE.size,
           _codes: dict[bytes, str] = {}) -> Entry:  # noqa: B006  # a cache of codes
    ts, offset, amount = _unpack(value)
    raw = value[_size:]
    code = _codes.get(raw)
    if code is None:
        code = raw.decode()
        if len(_codes) < 1024:
            _codes[raw] = code
    return ts, offset, amount, code


class CustomerHistories:
    """Payments per (partition, customer) in a worker-local RocksDB; see the module."""

    _open: ClassVar[set[Path]] = set()  # of this process

    def __init__(self, directory: Path) -> None:
        """A fresh database under ``directory``; what earlier processes left there is
        deleted (a cache: rebuilt from the table)."""
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.iterdir():
            if old not in self._open:
                shutil.rmtree(old, ignore_errors=True)
        path = directory / uuid.uuid4().hex
        self._open.add(path)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        options.set_write_buffer_size(WRITE_BUFFER_BYTES)
        options.set_max_write_buffer_number(MAX_WRITE_BUFFERS)
        # a seek looks only at the files and memtable entries that may hold the customer:
        # (a seek at 200,000 payments took 7 µs with these two settings, 13.5 without)
        options.set_prefix_extractor(SliceTransform.create_fixed_prefix(_PREFIX))
        options.set_memtable_prefix_bloom_ratio(0.1)
        options.set_compression_type(DBCompressionType.none())  # CPU over disk space
        table = BlockBasedOptions()
        table.set_block_cache(Cache(BLOCK_CACHE_BYTES))
        table.set_bloom_filter(10, False)
        # index and filter blocks grow with the data (about 2 % of it): in the block cache,
        # so its size bounds them, instead of each open file holding its own
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_metadata_block_size(4096)
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_top_level_index_and_filter(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        self.path = path
        self._db = Rdict(str(path), options)
        no_log = WriteOptions()
        no_log.disable_wal = True  # type: ignore[method-assign,assignment]  # a property
        self._db.set_write_options(no_log)
        self._reader: RdictIter | None = None  # over the database as of the last write
        self._scanning: object = None  # the scan that owns the iterator

    def memory(self) -> dict[str, int]:
        """Its native memory, as :func:`tables.stores.rocksdb_memory` counts it."""
        return rocksdb_memory([self._db])

    def close(self) -> None:
        self._reader = None
        self._db.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._open.discard(self.path)

    def put(self, partition: int, payments: Iterable[Payment]) -> None:
        batch = WriteBatch(raw_mode=True)
        put = batch.put
        for customer, ts, offset, amount, currency in payments:
            value = _value(ts, offset, amount, currency)
            micros = _micros(ts)
            head = _customer(partition, customer)
            put(_TIME_KIND + head + _TIME.pack(micros, offset), value)
            put(_AMOUNT_KIND + head + _currency(currency)
                + _AMOUNT.pack(_biased(amount), micros, offset), value)
        self._write(batch)

    def delete(self, partition: int, payments: Iterable[Payment]) -> None:
        batch = WriteBatch(raw_mode=True)
        for customer, ts, offset, amount, currency in payments:
            micros = _micros(ts)
            head = _customer(partition, customer)
            batch.delete(_TIME_KIND + head + _TIME.pack(micros, offset))
            batch.delete(_AMOUNT_KIND + head + _currency(currency)
                         + _AMOUNT.pack(_biased(amount), micros, offset))
        self._write(batch)

    def drop(self, partition: int) -> None:
        """Forget every payment of ``partition`` (before it is rebuilt, or revoked)."""
        batch = WriteBatch(raw_mode=True)
        for kind in (_TIME_KIND, _AMOUNT_KIND):
            batch.delete_range(kind + partition.to_bytes(2, "big"),
                               kind + (partition + 1).to_bytes(2, "big"))
        self._write(batch)

    def between(self, partition: int, customer: str, low: float, high: float,
                ) -> Iterator[Entry]:
        """The customer's payments with ``low <= event ts <= high`` (a µs either side:
        callers check the exact times), oldest first."""
        head = _TIME_KIND + _customer(partition, customer)
        return self._scan(head + _TIME.pack(_micros(low), 0),
                          head + _TIME.pack(_micros(high), _LAST))

    def amounts(self, partition: int, customer: str, currency: str, low: float,
                high: float) -> Iterator[Entry]:
        """The customer's payments in ``currency`` with ``low <= amount < high``
        (callers check the exact amounts and times)."""
        head = _AMOUNT_KIND + _customer(partition, customer) + _currency(currency)
        return self._scan(head + _AMOUNT.pack(_biased(math.ceil(low)), 0, 0),
                          head + _AMOUNT.pack(_biased(math.ceil(high)), 0, 0))

    def _scan(self, first: bytes, end: bytes) -> Iterator[Entry]:
        """Values of the keys in ``[first, end]``, through one iterator reused until
        the next write (creating one per lookup costs more than the lookup). So a scan
        must be done with before the next begins, as the rules do."""
        it = self._reader
        if it is None:
            read = ReadOptions()
            read.set_prefix_same_as_start(True)
            it = self._reader = self._db.iter(read)
        self._scanning = token = object()
        it.seek(first)
        valid, key, value, step = it.valid, it.key, it.value, it.next
        while valid():
            if key() > end:
                return
            yield _entry(value())
            if self._scanning is not token:
                raise RuntimeError("a history scan was interleaved with another")
            step()

    def _write(self, batch: WriteBatch) -> None:
        if len(batch):
            self._reader = None  # the iterator shows the database as of its creation
            self._db.write(batch)


def _currency(code: str) -> bytes:
    raw = code.encode()
    return len(raw).to_bytes(1, "big") + raw


class RecentTimes:
    """The in-memory tier in front of the disk: per partition and customer, the event times
    and offsets of its ``keep`` newest payments (by event time), in one ``array('d')``:
    ``[newest time ever evicted, ts, offset, ts, offset, ...]``, sorted by time.

    The velocity rule asks how many of a customer's payments lie within a time range.
    From memory that answer is exact when nothing ever evicted could lie in the range
    (the customer's own evicted time and the partition's floor are both below it):
    always so for a customer with few payments. Otherwise the caller reads what memory
    has first (:meth:`some`) and asks the disk, which has them all, only when those do
    not settle its question: a busy customer's ``keep`` newest payments are usually
    enough to flag it.
    Customers with no payment newer than ``horizon`` seconds behind the partition's
    newest event time are dropped (:meth:`evict`), raising the partition's floor. So
    memory is bounded by the customers active in the horizon, not by the payments in
    the dedupe window: 288 bytes per customer and partition holding 8 payments
    (tracemalloc over 200,000 of them).
    """

    def __init__(self, keep: int = 8, horizon: float = 900.0) -> None:
        self.keep, self.horizon = keep, horizon
        self._customers: dict[int, dict[str, array[float]]] = {}
        self._floor: dict[int, float] = {}  # newest time dropped with a whole customer
        self._clock: dict[int, float] = {}  # newest event time added

    def add(self, partition: int, customer: str, ts: float, offset: int) -> None:
        customers = self._customers.get(partition)
        if customers is None:
            customers = self._customers[partition] = {}
        times = customers.get(customer)
        if times is None:  # one key object per customer, whatever the partitions
            customers[sys.intern(customer)] = array("d", (-math.inf, ts, offset))
        else:
            i = len(times)
            while i > 1 and times[i - 2] > ts:  # mostly in time order: a step or none
                i -= 2
            j = i
            while j > 1 and times[j - 2] == ts:  # delivered again: kept once
                if times[j - 1] == offset:
                    return
                j -= 2
            times[i:i] = array("d", (ts, offset))
            if len(times) > 1 + 2 * self.keep:
                times[0] = max(times[0], times[1])
                del times[1:3]
        if ts > self._clock.get(partition, -math.inf):
            self._clock[partition] = ts

    def times(self, partition: int, customer: str, low: float, high: float,
              ) -> list[tuple[float, int]] | None:
        """``(ts, offset)`` of the customer's payments with ``low <= ts <= high``, or
        None when memory cannot be sure it has them all."""
        times = self._customers.get(partition, {}).get(customer)
        floor = self._floor.get(partition, -math.inf)
        if times is None:
            return [] if floor < low else None
        if max(times[0], floor) >= low:
            return None
        return [(times[i], int(times[i + 1])) for i in range(1, len(times), 2)
                if low <= times[i] <= high]

    def some(self, partition: int, customer: str, low: float, high: float,
             ) -> list[tuple[float, int]]:
        """``(ts, offset)`` of the customer's payments in memory with
        ``low <= ts <= high``: all of them when :meth:`times` is sure, else some."""
        times = self._customers.get(partition, {}).get(customer)
        if times is None:
            return []
        return [(times[i], int(times[i + 1])) for i in range(1, len(times), 2)
                if low <= times[i] <= high]

    def evict(self, partition: int) -> int:
        """Drop the customers with no payment within the horizon; returns how many."""
        customers = self._customers.get(partition)
        if not customers:
            return 0
        cutoff = self._clock.get(partition, -math.inf) - self.horizon
        old = [c for c, times in customers.items() if times[-2] < cutoff]
        floor = self._floor.get(partition, -math.inf)
        for customer in old:
            floor = max(floor, customers.pop(customer)[-2])
        self._floor[partition] = floor
        return len(old)

    def drop(self, partition: int) -> None:
        self._customers.pop(partition, None)
        self._floor.pop(partition, None)
        self._clock.pop(partition, None)

    def size(self) -> int:
        return sum(len(c) for c in self._customers.values())
