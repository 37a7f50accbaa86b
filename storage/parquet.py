"""The raw-event lake's writer: every consumed message, buffered per topic-partition and
appended to the lake's Delta Lake table (:mod:`storage.delta`) by size or age.

One flush of one topic-partition covers the offsets ``first..last`` and is one Delta
commit carrying the application transaction ``(<topic>-<partition>, last)``: a replay
after a crash or a takeover drops what the table already holds, so each offset is in the
table once, with no bookkeeping file of our own. Rows are partitioned by ``date`` and
``hour`` (event time for accepted messages, arrival time for failed ones).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.batches import SinkBatch
from storage.delta import RawTable
from storage.payment_arrays import SCHEMA as PAYMENT_SCHEMA
from storage.payment_arrays import payment_arrays

RAW_SCHEMA = pa.schema(
    [
        ("topic", pa.string()),
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("broker_timestamp", pa.timestamp("ms", tz="UTC")),
        ("arrival_time", pa.timestamp("us", tz="UTC")),
        ("accepted", pa.bool_()),
        ("error_category", pa.string()),
        ("transaction_id", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("merchant_id", pa.string()),
        ("amount_minor", pa.int64()),
        ("currency", pa.string()),
        ("channel", pa.string()),
        ("status", pa.string()),
        ("customer_id", pa.string()),  # added in schema version 2; null in older files
    ],
)
# the table's columns: the raw schema and its partition columns (the hour of the row)
TABLE_SCHEMA = pa.schema([*RAW_SCHEMA, pa.field("date", pa.string()),
                          pa.field("hour", pa.string())])


@dataclass
class _Buffer:
    topic: str
    partition: int
    started: float
    # one Arrow batch of the RAW_SCHEMA columns but topic and partition per sink batch,
    # made when it is appended (columns of numbers and times made whole, with no Python
    # object per row), and each row's hour since the epoch
    chunks: list[pa.RecordBatch] = field(default_factory=list)
    hours: list[np.ndarray] = field(default_factory=list)
    rows: int = 0
    # the newest message only: it names the partition when its table values are flushed,
    # and holding every buffered message (~300 bytes each beyond the columns) was a few
    # seconds of traffic in memory for nothing
    last_message: Any = None


@dataclass(frozen=True)
class Flushed:
    """What one flush made durable: its offsets, how many rows it covers and how many the
    table did not hold yet (a replay writes fewer), and the newest message among them."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    written: int
    rows: int
    last_message: Any


class RawEventWriter:
    """Buffers rows per topic-partition and flushes them by size or age."""

    def __init__(
        self,
        url: str,
        *,
        flush_rows: int = 50_000,
        flush_seconds: float = 5.0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.table = RawTable(url, storage_options)
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._buffers: dict[tuple[str, int], _Buffer] = {}
        self._next: dict[tuple[str, int], int] = {}  # next offset to buffer, per partition

    # -- buffering --------------------------------------------------------------

    def append(self, batch: SinkBatch) -> None:
        """Add a batch's messages (already stored in PostgreSQL) to its buffer."""
        self.append_many([batch])

    def append_many(self, batches: Sequence[SinkBatch]) -> None:
        """Add batches (already stored in PostgreSQL, in the order handled) to their
        partitions' buffers: one chunk a partition, however many batches (a sink round
        at 5,000 events/s holds about 150 small ones, and a chunk's fixed cost was a
        tenth of the worker's samples there).

        Offsets below the next expected one are redeliveries of rows already
        buffered or flushed in this assignment, and are skipped.
        """
        parts: dict[tuple[str, int], list[tuple[SinkBatch, Sequence[Any]]]] = {}
        for batch in batches:
            key = (batch.topic, batch.partition)
            messages = batch.messages
            expected = self._next.get(key)
            if expected is not None and messages[0].offset < expected:
                messages = [m for m in messages if m.offset >= expected]
                if not messages:
                    continue
            self._next[key] = messages[-1].offset + 1
            parts.setdefault(key, []).append((batch, messages))
        for key, mine in parts.items():
            buf = self._buffers.get(key)
            if buf is None:
                buf = self._buffers[key] = _Buffer(key[0], key[1], time.monotonic())
            chunk, hours = _rows(mine)
            buf.chunks.append(chunk)
            buf.hours.append(hours)
            buf.rows += chunk.num_rows
            buf.last_message = mine[-1][1][-1]

    def due(self, now: float | None = None) -> list[tuple[str, int]]:
        """Topic-partitions whose buffer is full or old enough to flush."""
        now = time.monotonic() if now is None else now
        return [
            key for key, buf in tuple(self._buffers.items())
            if buf.rows and (buf.rows >= self.flush_rows or now - buf.started >= self.flush_seconds)
        ]

    def seconds_until_due(self, now: float | None = None) -> float | None:
        """Seconds until the oldest buffer is due, or None when nothing is buffered."""
        now = time.monotonic() if now is None else now
        # a copy, made at once: a sink thread may add or flush a buffer meanwhile
        ages = [buf.started for buf in tuple(self._buffers.values()) if buf.rows]
        return max(0.0, min(ages) + self.flush_seconds - now) if ages else None

    def buffered(self) -> list[tuple[str, int]]:
        return [key for key, buf in tuple(self._buffers.items()) if buf.rows]

    def forget(self, topic: str, partition: int) -> None:
        """Drop a revoked partition's buffer; its new owner replays it."""
        self._buffers.pop((topic, partition), None)
        self._next.pop((topic, partition), None)

    # -- flushing ---------------------------------------------------------------

    def flush(self, topic: str, partition: int) -> Flushed | None:
        """Append the buffered rows of one topic-partition to the table in one commit;
        blocking (call in a thread)."""
        buf = self._buffers.pop((topic, partition), None)
        if buf is None or not buf.rows:
            return None
        rows = pa.Table.from_batches(buf.chunks, schema=_CHUNK_SCHEMA)
        offsets = rows["offset"]
        first, last = offsets[0].as_py(), offsets[-1].as_py()
        n = buf.rows
        arrays = {
            "topic": pa.array([topic] * n, pa.string()),
            "partition": pa.array([partition] * n, pa.int32()),
        }
        for f in _CHUNK_SCHEMA:
            arrays[f.name] = rows[f.name]
        # the partition columns, formatted once per hour the flush touches
        all_hours = np.concatenate(buf.hours)
        touched, index = np.unique(all_hours, return_inverse=True)
        starts = [datetime.fromtimestamp(int(hour) * 3600, UTC) for hour in touched]
        arrays["date"] = pa.array([f"{t:%Y-%m-%d}" for t in starts], pa.string()).take(index)
        arrays["hour"] = pa.array([f"{t:%H}" for t in starts], pa.string()).take(index)
        table = pa.Table.from_pydict(arrays, schema=TABLE_SCHEMA)
        written = self.table.append(table, f"{topic}-{partition}", last)
        return Flushed(topic, partition, first, last, written, n, buf.last_message)


# the columns a buffered chunk holds: the raw schema but the topic-partition's own two
_CHUNK_SCHEMA = pa.schema([f for f in RAW_SCHEMA if f.name not in ("topic", "partition")])
# Times within 2**31 s of the epoch (1901-2038) are a float's seconds to better than half
# a microsecond, so the whole microseconds a datetime held come back exactly; the others
# (a producer may set any time) go through datetime, as they always did.
_EXACT_SECONDS = 2.0 ** 31
_OFFSET, _KEY, _VALUE, _TIMESTAMP = (operator.attrgetter(name)
                                     for name in ("offset", "key", "value", "timestamp"))
_EVENT_TIME = operator.attrgetter("event_time")
# the payment's fields in the lake (besides its id and event time)
_LAKE_FIELDS = ("merchant_id", "amount_minor", "currency", "channel", "status", "customer_id")
_PAYMENT_FIELDS = [(name, PAYMENT_SCHEMA.field(name).type)
                   for name in ("transaction_id", "event_ts", *_LAKE_FIELDS)]


def _rows(parts: Sequence[tuple[SinkBatch, Sequence[Any]]]) -> tuple[pa.RecordBatch, np.ndarray]:
    """The lake's rows of each ``(batch, messages)`` (a batch's messages, maybe without
    its first ones), one after another: every message, with its payment's fields where
    it was accepted; and each row's hour since the epoch (its event time's when accepted,
    its batch's arrival's when not).

    The payments' fields come from the arrays the PostgreSQL sink staged them from
    (:func:`~storage.payment_arrays.payment_arrays`): a batch's accepted messages among
    the ones kept are its last payments, both being in offset order."""
    messages = list(chain.from_iterable(msgs for _, msgs in parts))
    n = len(messages)
    offsets = list(map(_OFFSET, messages))
    accepted = np.fromiter(chain.from_iterable(map(batch.payments.__contains__, map(_OFFSET, msgs))
                                               for batch, msgs in parts), np.bool_, n)
    every = bool(accepted.all())
    # each part's accepted rows (a part is never empty)
    kept = np.add.reduceat(accepted, np.cumsum([0] + [len(m) for _, m in parts[:-1]]),
                           dtype=np.int64).tolist() if n else []

    def payments() -> list[Any]:
        """The accepted payments themselves, in their rows' order (seldom needed)."""
        return [p for (batch, _), k in zip(parts, kept, strict=True)
                for p in list(batch.payments.values())[len(batch.payments) - k:]]

    made = [m for m in payment_arrays([batch for batch, _ in parts]) if m is not None]
    if len(made) < len(parts):  # a value beyond its column's type: each payment read
        fields = {name: pa.array(list(map(operator.attrgetter(name), payments())), kind)
                  for name, kind in _PAYMENT_FIELDS}
    else:
        table = pa.Table.from_batches(
            [m.slice(m.num_rows - k, k) for m, k in zip(made, kept, strict=True)],
            schema=PAYMENT_SCHEMA)
        fields = {name: table.column(name).combine_chunks() for name, _ in _PAYMENT_FIELDS}

    def spread(values: pa.Array) -> pa.Array:
        """The accepted rows' values in their rows, nulls in the others."""
        if every:
            return values
        at = np.cumsum(accepted) - 1
        return values.take(pa.array(np.where(accepted, at, 0), mask=~accepted))

    errors: list[str | None] = [None] * n
    if not every:
        errors = []
        for batch, msgs in parts:
            failed = {f.offset: f for f in batch.failed}
            errors += [None if offset in batch.payments else str(failed[offset].category)
                       if offset in failed else "unknown" for offset in map(_OFFSET, msgs)]
    # each row's batch: its arrival time and, for a row with no payment, its hour
    which = np.repeat(np.arange(len(parts)), [len(msgs) for _, msgs in parts])
    arrivals = pa.array([datetime.fromtimestamp(batch.arrival, UTC) for batch, _ in parts],
                        pa.timestamp("us", tz="UTC"))
    event_ts = fields.pop("event_ts").to_numpy()
    hours = np.array([int(batch.arrival // 3600) for batch, _ in parts], np.int64)[which]
    hours[accepted] = np.floor_divide(event_ts, 3600).astype(np.int64)
    if _exact(event_ts):
        event_time = _millis(event_ts)
    else:  # a producer's time beyond 1901-2038: through datetime, as it always was
        event_time = pa.array(list(map(_EVENT_TIME, payments())), pa.timestamp("ms", tz="UTC"))
    columns = {
        "offset": pa.array(np.array(offsets, np.int64)),
        "key": pa.array(list(map(_KEY, messages)), pa.binary()),
        "value": pa.array(list(map(_VALUE, messages)), pa.binary()),
        "broker_timestamp": _broker_times(list(map(_TIMESTAMP, messages))),
        "arrival_time": arrivals.take(pa.array(which)),
        "accepted": pa.array(accepted),
        "error_category": pa.array(errors, pa.string()),
        "transaction_id": spread(fields["transaction_id"]),
        "event_time": spread(event_time),
        **{name: spread(fields[name]) for name in _LAKE_FIELDS},
    }
    return pa.RecordBatch.from_pydict(columns, schema=_CHUNK_SCHEMA), hours


def _exact(seconds: np.ndarray) -> bool:
    return bool(np.all(np.abs(seconds) < _EXACT_SECONDS))


def _millis(seconds: np.ndarray) -> pa.Array:
    """Times in seconds since the epoch (each a whole microsecond, as a datetime's
    ``timestamp()`` gives it, within :data:`_EXACT_SECONDS`) as millisecond timestamps,
    floored as Arrow floors a datetime's microseconds."""
    micros = np.rint(seconds * 1e6).astype(np.int64)
    return pa.array(np.floor_divide(micros, 1000), pa.timestamp("ms", tz="UTC"))


def _broker_times(timestamps: Sequence[float | None]) -> pa.Array:
    """:func:`_broker_time` of each record timestamp, as one millisecond column."""
    seconds = np.array([t or np.nan for t in timestamps], np.float64)
    if _exact(seconds):  # no NaN (no timestamp) either
        return _millis(seconds)
    return pa.array([_broker_time(t) for t in timestamps], pa.timestamp("ms", tz="UTC"))


def _broker_time(timestamp: float | None) -> datetime | None:
    """The record's timestamp as it came, or None when it has none or it is outside what
    a timestamp column holds (a producer may set year 10000; the value is kept anyway)."""
    if not timestamp:
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (ValueError, OverflowError, OSError):
        return None
