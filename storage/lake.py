"""Queries over the raw-event lake, the Delta table of :mod:`storage.delta`.

A query names a time range and optional filters on merchant, status and
channel. It reads the files the table's transaction log lists (never one a compaction
replaced or a write that did not commit) through ``pyarrow.dataset``, so:

- **partition pruning**: only the ``date``/``hour`` partitions that overlap the range
  are opened (one per hour of event time for accepted events, of arrival time for
  failed ones);
- **predicate push-down**: the time and column filters go to the Parquet reader,
  which skips row groups by their statistics;
- **streaming**: results come as record batches, so memory stays flat whatever
  the size of the answer.

An event's time is its ``event_time`` when it was accepted and its
``arrival_time`` when it failed, the same time that placed it in its folder.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from models.errors import PaymentMonitorError
from storage.delta import RawTable
from storage.parquet import RAW_SCHEMA

FILTER_COLUMNS = ("merchant_id", "status", "channel")


class LakeQueryError(PaymentMonitorError, ValueError):
    """A query that cannot be answered as asked (bad range or filter)."""


@dataclass(frozen=True)
class LakeQuery:
    start: datetime  # inclusive, aware
    end: datetime  # exclusive, aware
    merchant_id: str | None = None
    status: str | None = None
    channel: str | None = None
    accepted_only: bool = False

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            if getattr(self, name).tzinfo is None:
                raise LakeQueryError(f"{name} must carry a time zone (UTC)")
        if self.end <= self.start:
            raise LakeQueryError(f"empty range: {self.start.isoformat()} is not before "
                                 f"{self.end.isoformat()}")

    def hours(self) -> list[tuple[str, str]]:
        """The ``(date, hour)`` folders the range overlaps."""
        t = self.start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        out = []
        while t < self.end:
            out.append((f"{t:%Y-%m-%d}", f"{t:%H}"))
            t += timedelta(hours=1)
        return out

    def expression(self) -> ds.Expression:
        hours = ds.field("date").isin(sorted({d for d, _ in self.hours()})) & (
            ds.field("hour").isin(sorted({h for _, h in self.hours()})))
        return hours & self.row_filter()

    def row_filter(self) -> ds.Expression:
        start = pa.scalar(self.start.astimezone(UTC), pa.timestamp("ms", tz="UTC"))
        end = pa.scalar(self.end.astimezone(UTC), pa.timestamp("ms", tz="UTC"))
        arrival_start = pa.scalar(self.start.astimezone(UTC), pa.timestamp("us", tz="UTC"))
        arrival_end = pa.scalar(self.end.astimezone(UTC), pa.timestamp("us", tz="UTC"))
        accepted = ((ds.field("accepted") == True)  # noqa: E712 - an Arrow expression
                    & (ds.field("event_time") >= start) & (ds.field("event_time") < end))
        failed = ((ds.field("accepted") == False)  # noqa: E712
                  & (ds.field("arrival_time") >= arrival_start)
                  & (ds.field("arrival_time") < arrival_end))
        expr = accepted if self.accepted_only else (accepted | failed)
        for name in FILTER_COLUMNS:
            value = getattr(self, name)
            if value is not None:
                expr = expr & (ds.field(name) == value)
        return expr


class RawEventLake:
    """Reads the lake at ``url`` (a directory or ``abfs://container/prefix``)."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.table = RawTable(url, storage_options)

    def scan(self, query: LakeQuery, columns: Sequence[str] | None = None,
             batch_rows: int = 64 * 1024) -> Iterator[pa.RecordBatch]:
        """Record batches of the events matching ``query``."""
        unknown = [c for c in columns or () if c not in RAW_SCHEMA.names]
        if unknown:
            raise LakeQueryError(f"unknown column {unknown[0]!r} (known: "
                                 f"{', '.join(RAW_SCHEMA.names)})")
        dataset = self.table.dataset()
        if dataset is None:
            return
        yield from dataset.to_batches(columns=list(columns) if columns else RAW_SCHEMA.names,
                                      filter=query.expression(), batch_size=batch_rows)

    def files(self, query: LakeQuery) -> list[str]:
        """The data files a scan of ``query`` opens: those of its hours only."""
        dataset = self.table.dataset()
        if dataset is None:
            return []
        return sorted(f.path for f in dataset.get_fragments(filter=query.expression()))

    def count(self, query: LakeQuery) -> int:
        return sum(b.num_rows for b in self.scan(query, columns=["offset"]))

    def get_events_by_time_range(self, start: datetime, end: datetime, **filters: Any,
                                 ) -> Iterator[pa.RecordBatch]:
        """Events with their time in ``[start, end)``; filters: merchant_id, status, channel."""
        return self.scan(LakeQuery(start, end, **filters))

    def get_events_by_date(self, day: date, **filters: Any) -> Iterator[pa.RecordBatch]:
        """Events of one UTC day."""
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        return self.get_events_by_time_range(start, start + timedelta(days=1), **filters)


def to_records(batch: pa.RecordBatch) -> list[dict[str, Any]]:
    """JSON-ready rows: bytes as text when UTF-8 (else base64 under ``<name>_b64``),
    times in ISO 8601."""
    import base64

    rows = batch.to_pylist()
    for row in rows:
        for name in ("key", "value"):
            raw = row.pop(name, None)
            if raw is None:
                if name in batch.schema.names:
                    row[name] = None
                continue
            try:
                row[name] = raw.decode()
            except UnicodeDecodeError:
                row[f"{name}_b64"] = base64.b64encode(raw).decode()
        for name, value in row.items():
            if isinstance(value, datetime):
                row[name] = value.isoformat()
    return rows
