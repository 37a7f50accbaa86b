"""The raw-event lake: every consumed message, as Parquet, on fsspec.

Layout: ``<root>/date=YYYY-MM-DD/hour=HH/<topic>-<partition>-<first>-<last>.parquet``
(event time for accepted messages, arrival time for failed ones). One flush of
one topic-partition covers the offsets ``first..last`` and writes one file per
date/hour it touches, all with that same name.

Replays rewrite, never add. Before a flush writes its files it records them in
``<root>/_inflight/<topic>-<partition>.json``, together with every earlier
flush whose commit is not yet confirmed; the offsets are committed right
after. A worker that starts a partition from its committed offset ``C`` finds
there the files of the flushes that were never committed (first offset at
least ``C``), deletes them, and writes its own. Within one assignment, an
offset already buffered is never buffered again (a seek back to the committed
offset re-delivers what is in flight). Local files are written under
a dot-name and renamed; a blob upload is only visible once committed. Readers
(pyarrow.dataset) ignore names starting with ``.`` or ``_``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from pipeline.batches import SinkBatch

RAW_SCHEMA_VERSION = "2"
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
    metadata={"raw_events_schema_version": RAW_SCHEMA_VERSION},
)
ROW_GROUP_ROWS = 128 * 1024


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
    """What one flush made durable: the files, how many rows they hold, and the newest
    message among them."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    paths: list[str]
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
        self.fs, self.root = fsspec.core.url_to_fs(url, **(storage_options or {}))
        self.root = self.root.rstrip("/")
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        self._buffers: dict[tuple[str, int], _Buffer] = {}
        self._checked: set[tuple[str, int]] = set()
        self._next: dict[tuple[str, int], int] = {}  # next offset to buffer, per partition
        self._uncommitted: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
        self._local = is_local(self.fs)

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
        self._checked.discard((topic, partition))
        self._next.pop((topic, partition), None)
        self._uncommitted.pop((topic, partition), None)

    def committed(self, topic: str, partition: int, next_offset: int) -> None:
        """The group committed ``next_offset``: earlier flushes are final."""
        pending = self._uncommitted[(topic, partition)]
        pending[:] = [e for e in pending if e["last_offset"] >= next_offset]

    # -- flushing ---------------------------------------------------------------

    def flush(self, topic: str, partition: int) -> Flushed | None:
        """Write the buffered rows of one topic-partition; blocking (call in a thread)."""
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
        table = pa.Table.from_pydict(arrays, schema=RAW_SCHEMA)

        groups: dict[int, list[int]] = defaultdict(list)
        for i, hour in enumerate(buf.hours):
            groups[hour].append(i)
        name = f"{topic}-{partition}-{first}-{last}.parquet"
        paths = [f"{self._hour_dir(hour)}/{name}" for hour in sorted(groups)]

        self._clean_uncommitted(topic, partition, first)
        pending = self._uncommitted[(topic, partition)]
        pending.append({"first_offset": first, "last_offset": last, "files": paths})
        self._write_intent(topic, partition, pending)
        for hour, path in zip(sorted(groups), paths, strict=True):
            rows = groups[hour]
            part = table if len(rows) == n else table.take(pa.array(rows, pa.int64()))
            self._write_atomic(part, path)
        return Flushed(topic, partition, first, last, paths, n, buf.last_message)

    def _hour_dir(self, hour: int) -> str:
        t = datetime.fromtimestamp(hour * 3600, UTC)
        return f"{self.root}/date={t:%Y-%m-%d}/hour={t:%H}"

    def _intent_path(self, topic: str, partition: int) -> str:
        return f"{self.root}/_inflight/{topic}-{partition}.json"

    def _clean_uncommitted(self, topic: str, partition: int, first: int) -> None:
        """Once per assignment: delete the files of a flush that was never committed."""
        key = (topic, partition)
        if key in self._checked:
            return
        self._checked.add(key)
        path = self._intent_path(topic, partition)
        if not self.fs.exists(path):
            return
        with self.fs.open(path, "rb") as fh:
            intent = json.loads(fh.read())
        for entry in intent["flushes"]:
            if entry["first_offset"] >= first:
                for stale in entry["files"]:
                    if self.fs.exists(stale):
                        self.fs.rm(stale)

    def _write_intent(self, topic: str, partition: int, flushes: list[dict[str, Any]]) -> None:
        path = self._intent_path(topic, partition)
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        body = json.dumps({"flushes": flushes})
        self._put_atomic(path, body.encode())

    def _write_atomic(self, table: pa.Table, path: str) -> None:
        write_parquet_atomic(self.fs, table, path)

    def _put_atomic(self, path: str, data: bytes) -> None:
        directory, name = path.rsplit("/", 1)
        target = f"{directory}/.{name}.tmp" if self._local else path
        with self.fs.open(target, "wb") as fh:
            fh.write(data)
        if self._local:
            self.fs.mv(target, path)


def is_local(fs: AbstractFileSystem) -> bool:
    return fs.protocol in ("file", "local") or "file" in fs.protocol


def write_parquet_atomic(fs: AbstractFileSystem, table: pa.Table, path: str) -> None:
    """Write ``table`` to ``path`` so no reader sees half a file: on disk under a hidden
    temporary name then renamed; a blob is visible only once its upload is committed."""
    directory, name = path.rsplit("/", 1)
    fs.makedirs(directory, exist_ok=True)
    local = is_local(fs)
    target = f"{directory}/.{name}.tmp" if local else path
    with fs.open(target, "wb") as fh:
        pq.write_table(table, fh, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    if local:
        fs.mv(target, path)


def _broker_time(timestamp: float | None) -> datetime | None:
    """The record's timestamp as it came, or None when it has none or it is outside what
    a timestamp column holds (a producer may set year 10000; the value is kept anyway)."""
    if not timestamp:
        return None
    try:
        return datetime.fromtimestamp(timestamp, UTC)
    except (ValueError, OverflowError, OSError):
        return None
