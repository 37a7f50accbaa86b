"""The raw-event lake's writer: every consumed message, buffered per topic-partition and
appended to the lake's Delta Lake table (:mod:`storage.delta`) by size or age.

One flush of one topic-partition covers the offsets ``first..last`` and is one Delta
commit carrying the application transaction ``(<topic>-<partition>, last)``: a replay
after a crash or a takeover drops what the table already holds, so each offset is in the
table once, with no bookkeeping file of our own. Rows are partitioned by ``date`` and
``hour`` (event time for accepted messages, arrival time for failed ones).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from pipeline.batches import SinkBatch
from storage.delta import RawTable

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
    columns: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    hours: list[int] = field(default_factory=list)
    # the newest message only: it names the partition when its table values are flushed,
    # and holding every buffered message (~300 bytes each beyond the columns) was a few
    # seconds of traffic in memory for nothing
    last_message: Any = None

    @property
    def rows(self) -> int:
        return len(self.hours)


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
        """Add a batch's messages (already stored in PostgreSQL) to its buffer.

        Offsets below the next expected one are redeliveries of rows already
        buffered or flushed in this assignment, and are skipped.
        """
        key = (batch.topic, batch.partition)
        messages = batch.messages
        expected = self._next.get(key)
        if expected is not None and messages[0].offset < expected:
            messages = [m for m in messages if m.offset >= expected]
            if not messages:
                return
        self._next[key] = messages[-1].offset + 1
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _Buffer(batch.topic, batch.partition, time.monotonic())
        cols = buf.columns
        arrival = datetime.fromtimestamp(batch.arrival, UTC)
        arrival_hour = int(batch.arrival // 3600)
        failed = {f.offset: f for f in batch.failed}
        for m in messages:
            cols["offset"].append(m.offset)
            cols["key"].append(m.key)
            cols["value"].append(m.value)
            cols["broker_timestamp"].append(_broker_time(m.timestamp))
            cols["arrival_time"].append(arrival)
            p = batch.payments.get(m.offset)
            if p is not None:
                cols["accepted"].append(True)
                cols["error_category"].append(None)
                cols["transaction_id"].append(p.transaction_id)
                cols["event_time"].append(p.event_time)
                cols["merchant_id"].append(p.merchant_id)
                cols["amount_minor"].append(p.amount_minor)
                cols["currency"].append(p.currency)
                cols["channel"].append(p.channel)
                cols["status"].append(p.status)
                cols["customer_id"].append(p.customer_id)
                buf.hours.append(int(p.event_time.timestamp() // 3600))
            else:
                f = failed.get(m.offset)
                cols["accepted"].append(False)
                cols["error_category"].append(str(f.category) if f else "unknown")
                for name in ("transaction_id", "event_time", "merchant_id", "amount_minor",
                             "currency", "channel", "status", "customer_id"):
                    cols[name].append(None)
                buf.hours.append(arrival_hour)
        buf.last_message = messages[-1]

    def due(self, now: float | None = None) -> list[tuple[str, int]]:
        """Topic-partitions whose buffer is full or old enough to flush."""
        now = time.monotonic() if now is None else now
        return [
            key for key, buf in self._buffers.items()
            if buf.rows and (buf.rows >= self.flush_rows or now - buf.started >= self.flush_seconds)
        ]

    def seconds_until_due(self, now: float | None = None) -> float | None:
        """Seconds until the oldest buffer is due, or None when nothing is buffered."""
        now = time.monotonic() if now is None else now
        ages = [buf.started for buf in self._buffers.values() if buf.rows]
        return max(0.0, min(ages) + self.flush_seconds - now) if ages else None

    def buffered(self) -> list[tuple[str, int]]:
        return [key for key, buf in self._buffers.items() if buf.rows]

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
        cols = buf.columns
        first, last = cols["offset"][0], cols["offset"][-1]
        n = buf.rows
        arrays = {
            "topic": pa.array([topic] * n, pa.string()),
            "partition": pa.array([partition] * n, pa.int32()),
        }
        for f in RAW_SCHEMA:
            if f.name not in arrays:
                arrays[f.name] = pa.array(cols[f.name], f.type)
        # the partition columns, formatted once per hour the flush touches
        starts = {hour: datetime.fromtimestamp(hour * 3600, UTC) for hour in set(buf.hours)}
        dates = {hour: f"{t:%Y-%m-%d}" for hour, t in starts.items()}
        hours = {hour: f"{t:%H}" for hour, t in starts.items()}
        arrays["date"] = pa.array([dates[h] for h in buf.hours], pa.string())
        arrays["hour"] = pa.array([hours[h] for h in buf.hours], pa.string())
        table = pa.Table.from_pydict(arrays, schema=TABLE_SCHEMA)
        written = self.table.append(table, f"{topic}-{partition}", last)
        return Flushed(topic, partition, first, last, written, n, buf.last_message)


def _broker_time(timestamp: float | None) -> datetime | None:
    """The record's timestamp as it came, or None when it has none or it is outside what
    a timestamp column holds (a producer may set year 10000; the value is kept anyway)."""
    if not timestamp:
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (ValueError, OverflowError, OSError):
        return None
