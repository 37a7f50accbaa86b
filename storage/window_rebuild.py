"""Rebuild the stored windows of a range from the accepted payments, under the
configuration active now: the second half of ``faust -A app reprocess`` (docs/metrics.md,
"Recompute after a rule change").

The live windows are the workers' RocksDB values, upserted as absolute values per source
partition (``payment_window_partials``, ``histogram_partials``) and merged
(``payment_metrics_5m``, ``aggregate_histograms``). They hold the windowed metrics of the
configuration each payment arrived under, and leave out the payments later than the
grace period. Rebuilt from ``normalized_transactions`` (every accepted payment once), a
window holds every payment of its event time under today's metrics, the late ones too.

The unit of work is one window of the largest size (an hour by default) with every
smaller window inside it, so an hour stays exactly the merge of its twelve 5-minute
windows. It is rebuilt only once it has **settled** in every source partition holding
payments of it: it ended ``WINDOW_RETENTION_S`` plus :class:`pipeline.rules.EventTimeSkewRule`'s
largest future allowance (an hour) before the newest stored payment of the partition. By then the
workers have deleted it from their tables, so no worker writes its payment or metric rows
again; a later late payment only writes the window's ``late_events`` row, which a rebuild
keeps as it is, like the ``failed|category=`` rows (facts about arrival, not about
rules). A window that has not settled is left to the workers and reported.

Per hour, one transaction under the sinks' advisory lock (:data:`METRICS_LOCK_ID`): the
rebuilt partitions' rows are replaced and the hour's merged rows recomputed from every
partition's rows. Run again, it writes the same rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from psycopg2.extras import execute_values

from models.events import STATUSES, ParsedTransaction, TransactionStatus
from pipeline.metrics import MetricEngine, no_history
from pipeline.rules import EventTimeSkewRule
from pipeline.windows import (
    FAILED_EVENTS,
    LATE_EVENTS,
    HistogramPartials,
    WindowMetrics,
    observe,
    window_start,
)
from storage.postgres import METRICS_LOCK_ID, PARTIALS_TEMPLATE, merge_aggregates

# payments read from the server-side cursor at a time (their metrics are observed in bulk)
CHUNK = 20_000
# how far ahead of its record time an event may be dated, at most (the event-time rule's
# ceiling): a partition's stream time is at least its newest stored event time minus this
FUTURE_ALLOWANCE_S = EventTimeSkewRule.MAX_FUTURE_LIMIT_S
KEPT_METRICS = (LATE_EVENTS, FAILED_EVENTS)  # rows of arrival, not of the configuration

NEWEST_PER_PARTITION = """
SELECT source_partition, max(event_time) FROM normalized_transactions
WHERE event_time >= %(since)s GROUP BY source_partition
"""
PARTITIONS_IN = """
SELECT DISTINCT source_partition FROM normalized_transactions
WHERE event_time >= %(start)s AND event_time < %(end)s
"""
SELECT_PAYMENTS = """
SELECT source_partition, source_offset, transaction_id, event_time, merchant_id,
       customer_id, amount_minor, currency, channel, payment_method, status, decline_code,
       country, processing_ms, card_bin, risk_score, metadata
FROM normalized_transactions
WHERE event_time >= %(start)s AND event_time < %(end)s
ORDER BY source_partition, source_offset
"""
_IN_HOUR = ("window_seconds = ANY(%(sizes)s) AND window_start >= %(start)s "
            "AND window_start < %(end)s")
COUNTED = """
SELECT coalesce(sum(tx_count), 0) FROM payment_window_partials
WHERE window_seconds = %(finest)s AND window_start >= %(start)s AND window_start < %(end)s
"""
DELETE_COUNTS = f"""
DELETE FROM payment_window_partials
WHERE {_IN_HOUR} AND source_partition = ANY(%(partitions)s)
"""
INSERT_COUNTS = f"""
INSERT INTO payment_window_partials (
    window_seconds, window_start, channel, source_partition, tx_count,
    {", ".join(f"{s}_count" for s in STATUSES)}, amount_minor_sum, last_offset
) VALUES %s
"""
WATERMARKS = f"""
SELECT window_seconds, window_start, source_partition, max(last_offset)
FROM histogram_partials WHERE {_IN_HOUR} AND source_partition = ANY(%(partitions)s)
GROUP BY 1, 2, 3
"""
DELETE_HISTOGRAMS = f"""
DELETE FROM histogram_partials
WHERE {_IN_HOUR} AND source_partition = ANY(%(partitions)s)
  AND metric_type <> ALL(%(kept)s)
"""
INSERT_HISTOGRAMS = """
INSERT INTO histogram_partials (
    window_seconds, window_start, metric_type, dimension, source_partition,
    buckets, count, sum, min, max, last_offset
) VALUES %s
"""
MARK_REBUILT = """
INSERT INTO rebuilt_windows (window_seconds, window_start, source_partition, config_version)
VALUES %s
ON CONFLICT (window_seconds, window_start, source_partition) DO UPDATE SET
    config_version = EXCLUDED.config_version, rebuilt_at = now()
"""
RECOUNT_5M = f"""
DELETE FROM payment_metrics_5m WHERE window_start >= %(start)s AND window_start < %(end)s;
INSERT INTO payment_metrics_5m (
    window_start, channel, tx_count, {", ".join(f"{s}_count" for s in STATUSES)},
    amount_minor_sum, updated_at
)
SELECT window_start, channel, sum(tx_count), {", ".join(f"sum({s}_count)" for s in STATUSES)},
       sum(amount_minor_sum), now()
FROM payment_window_partials
WHERE window_seconds = %(finest)s AND window_start >= %(start)s AND window_start < %(end)s
GROUP BY window_start, channel
"""
DELETE_AGGREGATES = """
DELETE FROM aggregate_histograms WHERE window_seconds = ANY(%(sizes)s)
  AND time_window >= %(start)s AND time_window < %(end)s
"""
# in the live sink's order (storage.postgres.SELECT_HISTOGRAM_PARTIALS): float sums merge
# in a fixed order
SELECT_PARTIALS = f"""
SELECT window_seconds, window_start, metric_type, dimension, buckets::text, count, sum, min,
       max
FROM histogram_partials WHERE {_IN_HOUR}
ORDER BY window_seconds, window_start, metric_type, dimension, source_partition
"""


@dataclass
class WindowReport:
    """What the rebuild of a range's windows did (or would do)."""

    # windows rebuilt, per size in seconds
    rebuilt: dict[int, int] = field(default_factory=dict)
    # starts of the largest windows left to the workers: not settled in every partition
    unsettled: list[datetime] = field(default_factory=list)
    # payments the rebuilt windows count that they did not before (late ones, brought in)
    brought_in: int = 0
    # the aligned span rebuilt: the largest windows wholly inside the range
    span: tuple[datetime, datetime] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "span": None if self.span is None else [t.isoformat() for t in self.span],
            "rebuilt": {str(size): n for size, n in sorted(self.rebuilt.items())},
            "unsettled": [t.isoformat() for t in self.unsettled],
            "brought_in": self.brought_in,
        }


@dataclass(frozen=True)
class WindowPlan:
    """The window sizes (ascending) and when a window has settled."""

    sizes: tuple[int, ...]
    retention_s: float

    @property
    def largest(self) -> int:
        return self.sizes[-1]

    @property
    def finest(self) -> int:
        return self.sizes[0]

    def hours(self, since: datetime, until: datetime) -> list[int]:
        """Starts (POSIX seconds) of the largest windows wholly inside ``[since, until)``."""
        first = -(-int(since.timestamp()) // self.largest) * self.largest
        return list(range(first, int(until.timestamp()) - self.largest + 1, self.largest))

    def settled(self, end: int, newest: datetime | None) -> bool:
        """Whether a window ending at ``end`` has left a partition whose newest stored
        payment has event time ``newest``: the workers deleted it from their tables."""
        return newest is not None and (
            end + self.retention_s + FUTURE_ALLOWANCE_S <= newest.timestamp())


Cursor = Any
Bounds = Callable[[str], tuple[float, ...]]


def rebuild_windows(connect: Callable[[], Any], engine: MetricEngine, bounds: Bounds,
                    version: str, plan: WindowPlan, since: datetime, until: datetime, *,
                    dry_run: bool, progress: Callable[[datetime], None] | None = None,
                    ) -> WindowReport:
    """Rebuild every settled window of the largest size wholly inside ``[since, until)``,
    with the smaller windows inside it, under configuration ``version`` (``engine``): one
    transaction each (``connect()`` gives a context manager yielding a cursor, committed
    on exit), rolled back when ``dry_run``. Each rebuilt (window, partition) is marked in
    ``rebuilt_windows``: a worker's later write replaces only its late_events and failed
    rows."""
    report = WindowReport()
    hours = plan.hours(since, until)
    if not hours:
        return report
    report.span = (_ts(hours[0]), _ts(hours[-1] + plan.largest))
    with connect() as cur:
        cur.execute(NEWEST_PER_PARTITION, {"since": report.span[0]})
        newest = dict(cur.fetchall())
    for start in hours:
        end = start + plan.largest
        with connect() as cur:
            _hour(cur, engine, bounds, version, plan, start, newest, report)
            if dry_run:
                cur.connection.rollback()
        if progress is not None:
            progress(_ts(end))
    return report


def _hour(cur: Cursor, engine: MetricEngine, bounds: Bounds, version: str, plan: WindowPlan,
          start: int, newest: Mapping[int, datetime], report: WindowReport) -> None:
    end = start + plan.largest
    span = {"start": _ts(start), "end": _ts(end)}
    cur.execute(PARTITIONS_IN, span)
    partitions = sorted(p for (p,) in cur.fetchall())
    if not partitions:
        return
    if not all(plan.settled(end, newest.get(p)) for p in partitions):
        report.unsettled.append(_ts(start))
        return
    counts, metrics = _count(cur, engine, bounds, plan, span)
    params = {**span, "sizes": list(plan.sizes), "partitions": partitions,
              "finest": plan.finest, "kept": list(KEPT_METRICS)}
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (METRICS_LOCK_ID,))
    cur.execute(COUNTED, params)
    before = int(cur.fetchone()[0])
    cur.execute(DELETE_COUNTS, params)
    execute_values(cur, INSERT_COUNTS, [_count_row(key, c) for key, c in sorted(counts.items())],
                   page_size=1000)
    cur.execute(WATERMARKS, params)
    for size, window, partition, last in cur.fetchall():
        value = metrics.get((size, int(window.timestamp()), partition))
        if value is not None:  # the failed and late entries' offsets count too
            value.last_offset = max(value.last_offset, int(last))
    rows = HistogramPartials()
    for (size, window, partition), value in sorted(metrics.items()):
        rows.add(size, window, partition, value)
    cur.execute(DELETE_HISTOGRAMS, params)
    execute_values(cur, INSERT_HISTOGRAMS, rows.rows, PARTIALS_TEMPLATE, page_size=2000)
    marks = {(size, window, partition) for size, window, _, partition in counts} | set(metrics)
    execute_values(cur, MARK_REBUILT, [(size, _ts(window), partition, version)
                                       for size, window, partition in sorted(marks)])
    cur.execute(RECOUNT_5M, params)
    cur.execute(COUNTED, params)
    report.brought_in += int(cur.fetchone()[0]) - before
    _merge_aggregates(cur, bounds, params)
    for size in plan.sizes:
        report.rebuilt[size] = report.rebuilt.get(size, 0) + len(
            {k[1] for k in counts if k[0] == size} | {k[1] for k in metrics if k[0] == size})


@dataclass(slots=True)
class _Counts:
    """One (window, channel, partition) of ``payment_window_partials``."""

    tx_count: int = 0
    amount_minor_sum: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    last_offset: int = -1


def _count(cur: Cursor, engine: MetricEngine, bounds: Bounds, plan: WindowPlan,
           span: dict[str, datetime]) -> tuple[dict[tuple[int, int, str, int], _Counts],
                                               dict[tuple[int, int, int], WindowMetrics]]:
    """Counts per (size, window, channel, partition) and windowed metrics per (size,
    window, partition) of the hour's payments, read a chunk at a time."""
    counts: dict[tuple[int, int, str, int], _Counts] = {}
    metrics: dict[tuple[int, int, int], WindowMetrics] = {}
    for partition, chunk in _chunks(cur, span):
        # metrics observed per finest window, then merged into every size holding it
        entries: dict[int, list[tuple[int, Any]]] = {}
        for offset, p in chunk:
            ts = p.event_ts
            for size in plan.sizes:
                key = (size, window_start(ts, size), p.channel, partition)
                c = counts.get(key)
                if c is None:
                    c = counts[key] = _Counts()
                c.tx_count += 1
                c.amount_minor_sum += p.amount_minor
                c.by_status[p.status] = c.by_status.get(p.status, 0) + 1
                c.last_offset = max(c.last_offset, offset)
            entries.setdefault(window_start(ts, plan.finest), []).append(
                (offset, engine.extract(p, offset, no_history)))
        for finest, group in entries.items():
            delta, last = observe(group, bounds)
            for size in plan.sizes:
                at = (size, window_start(finest, size), partition)
                value = metrics.get(at)
                if value is None:
                    value = metrics[at] = WindowMetrics()
                value.merge(delta)
                value.last_offset = max(value.last_offset, last)
    return counts, metrics


def _chunks(cur: Cursor, span: dict[str, datetime],
            ) -> Iterator[tuple[int, list[tuple[int, ParsedTransaction]]]]:
    """The hour's payments, in partition and offset order, as ``(partition, [(offset,
    payment)])`` chunks of at most :data:`CHUNK` (a chunk holds one partition)."""
    chunk: list[tuple[int, ParsedTransaction]]
    with cur.connection.cursor(name="reprocess_windows") as named:
        named.itersize = CHUNK
        named.execute(SELECT_PAYMENTS, span)
        partition, chunk = -1, []  # partitions are >= 0
        while rows := named.fetchmany(CHUNK):
            for row in rows:
                if row[0] != partition or len(chunk) >= CHUNK:
                    if chunk:
                        yield partition, chunk
                    partition, chunk = row[0], []
                chunk.append((int(row[1]), payment_from_row(row[2:])))
        if chunk:
            yield partition, chunk


def _merge_aggregates(cur: Cursor, bounds: Bounds, params: dict[str, Any]) -> None:
    """Recompute the hour's ``aggregate_histograms`` from every partition's rows."""
    cur.execute(DELETE_AGGREGATES, params)
    cur.execute(SELECT_PARTIALS, params)
    merge_aggregates(cur, cur.fetchall(), bounds)


def _count_row(key: tuple[int, int, str, int], c: _Counts) -> tuple[Any, ...]:
    size, start, channel, partition = key
    return (size, _ts(start), channel, partition, c.tx_count,
            *(c.by_status.get(s, 0) for s in STATUSES), c.amount_minor_sum, c.last_offset)


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def payment_from_row(row: Sequence[Any]) -> ParsedTransaction:
    """A payment from a ``normalized_transactions`` row: ``transaction_id`` to
    ``metadata`` in the table's order."""
    (tx_id, event_time, merchant, customer, amount, currency, channel, method, status,
     decline, country, processing_ms, card_bin, risk_score, metadata) = row
    return ParsedTransaction(
        transaction_id=tx_id, event_time=event_time.astimezone(UTC), merchant_id=merchant,
        customer_id=customer, amount_minor=int(amount), currency=currency, channel=channel,
        payment_method=method, status=TransactionStatus(status), decline_code=decline,
        country=country, processing_ms=int(processing_ms), card_bin=card_bin,
        risk_score=risk_score, metadata=metadata)
