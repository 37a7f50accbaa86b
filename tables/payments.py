"""The windowed tables of accepted payments, per window size (5 minutes and 1 hour).

- ``window-counts-<size>``: key ``"<window_start>|<channel>|<partition>"``, value
  :class:`pipeline.windows.WindowCounts` (payments, statuses, amount sum): feeds
  ``payment_metrics_5m``.
- ``window-metrics-<size>``: key ``"<window_start>|<partition>"``, value
  :class:`pipeline.windows.WindowMetrics` (a mergeable histogram per windowed
  metric and dimension, and ``late_events``): feeds ``aggregate_histograms``.
- ``stream-clock``: key ``"<partition>"``, value :class:`pipeline.windows.StreamClock`
  (the partition's stream time, which decides what is late).

Window start is in POSIX seconds (event time). Each source partition keeps its
own keys, so one worker owns each value outright and a rebalance moves it with
its changelog partition; a reader adds the partitions up. Values are written
once per key per commit through :class:`tables.cache.WriteBackCache`.

A batch's windowed metrics are *folded* into the metric values a few batches at a
time (:meth:`WindowState.fold`): at 5,000 payments/s a partition batch holds a dozen
or two payments, and computing their histograms cost about 26 µs a payment against 4
for 256 at once (``python -m benchmarks.kernels``). The batches wait, per partition,
until they hold ``fold_events`` messages, and every reader folds them first: the
flush before a commit, the web views, the expiry. So the values a reader or the
changelog sees are the same; only the float sums group otherwise (as they already
do with the fetches' sizes).

Faust's ``.tumbling()`` wrapper is not used: it needs a stream's current
event for every update, expires windows on wall-clock time, and hands
``on_window_close`` the raw per-key value rather than the window's aggregate
(docs/adr/0005-windows.md); the window is part of the key instead, and
:func:`expired_keys` expires windows on stream time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from faust.types import AppT, Message, TableT

from models.events import FailedMessage
from pipeline.columns import PaymentColumns
from pipeline.metrics import BatchMetrics
from pipeline.windows import (
    Bounds,
    FailedEntry,
    HistogramPartials,
    StreamClock,
    WindowCounts,
    WindowedBatch,
    WindowMetrics,
    WindowRow,
    apply_columns,
    count_groups,
    late_mask,
    window_start,
)
from tables.cache import WriteBackCache
from tables.context import partition_context, placeholder_message
from tables.stores import rocksdb_options

log = logging.getLogger(__name__)
CLOCK_TABLE = "stream-clock"


def size_label(size: int) -> str:
    if size % 3600 == 0:
        return f"{size // 3600}h"
    if size % 60 == 0:
        return f"{size // 60}m"
    return f"{size}s"


def counts_table(size: int) -> str:
    return f"window-counts-{size_label(size)}"


def metrics_table(size: int) -> str:
    return f"window-metrics-{size_label(size)}"


@dataclass(frozen=True)
class WindowTables:
    sizes: tuple[int, ...]
    tables: dict[str, TableT]  # by name


def declare_tables(app: AppT, partitions: int, sizes: Iterable[int] = (300, 3600),
                   ) -> WindowTables:
    """Declare the window tables and the stream clock, partitioned like ``payments``."""
    sizes = tuple(sorted(sizes))
    tables: dict[str, TableT] = {}
    for size in sizes:
        tables[counts_table(size)] = app.Table(
            counts_table(size), default=None, partitions=partitions,
            help=f"accepted payments per {size} s event-time window, channel and partition",
            options=rocksdb_options())
        tables[metrics_table(size)] = app.Table(
            metrics_table(size), default=None, partitions=partitions,
            help=f"windowed metric histograms per {size} s event-time window and partition",
            options=rocksdb_options())
    tables[CLOCK_TABLE] = app.Table(CLOCK_TABLE, default=None, partitions=partitions,
                                    help="stream time (newest event time) per partition",
                                    options=rocksdb_options())
    return WindowTables(sizes, tables)


def table_key(window_start: int, channel: str, partition: int) -> str:
    return f"{window_start}|{channel}|{partition}"


def split_key(key: str) -> tuple[int, str, int]:
    start, channel, partition = key.split("|")
    return int(start), channel, int(partition)


def metrics_key(window_start: int, partition: int) -> str:
    return f"{window_start}|{partition}"


def split_metrics_key(key: str) -> tuple[int, int]:
    start, partition = key.split("|")
    return int(start), int(partition)


def key_window_start(key: str) -> int:
    return int(key.split("|", 1)[0])


Pending = tuple[BatchMetrics, np.ndarray, list[FailedEntry]]  # (metrics, late, failed)


@dataclass(slots=True)
class Waiting:
    """A partition's batches not folded yet, how many messages they hold, and the last
    offset among them."""

    batches: list[Pending] = field(default_factory=list)
    messages: int = 0
    last_offset: int = -1


def key_partition(key: str) -> int:
    return int(key.rsplit("|", 1)[1])


def key_order(key: str) -> tuple[int, str, int]:
    """Sort order of window keys of either kind: window start, channel, partition."""
    parts = key.split("|")
    return (int(parts[0]), parts[1], int(parts[2])) if len(parts) == 3 else (
        int(parts[0]), "", int(parts[1]))


def expired_keys(keys: Iterable[str], size: int, stream_time: float,
                 retention: float) -> list[str]:
    """Keys of windows that ended ``retention`` seconds or more before ``stream_time``."""
    return [k for k in keys if key_window_start(k) + size + retention <= stream_time]


class WindowState:
    """The window tables of one worker, behind a write-back cache.

    Args:
        app: the Faust app the tables belong to.
        windows: the declared tables (:func:`declare_tables`).
        bounds: a windowed metric's bucket bounds (the configuration's; stored values
            carry their own, this serves values stored before they did).
        grace: seconds a window stays open after its end, in stream time.
        source_topic: the topic whose partitions key the state (``payments``).
        fold_events: a partition's batches wait until they hold this many messages
            before their windowed metrics are folded in (:meth:`fold`); 1 folds each
            batch as it is counted.
    """

    def __init__(self, app: AppT, windows: WindowTables, bounds: Bounds, grace: float,
                 source_topic: str, fold_events: int = 1) -> None:
        self.windows = windows
        self.sizes = windows.sizes
        self.finest = windows.sizes[0]
        self.bounds = bounds
        self.grace = grace
        self.source_topic = source_topic
        self.app = app
        decoders: dict[str, Callable[[Any], Any]] = {CLOCK_TABLE: StreamClock.from_dict}
        for size in self.sizes:
            decoders[counts_table(size)] = WindowCounts.from_dict
            decoders[metrics_table(size)] = lambda data: WindowMetrics.from_dict(data, bounds)
        self.cache = WriteBackCache(app, windows.tables, decoders)
        self._metrics_tables = {metrics_table(size): size for size in self.sizes}
        self.fold_events = fold_events
        self._waiting: dict[int, Waiting] = {}  # by partition

    # -- the ingest handler ----------------------------------------------------------

    def count(self, partition: int, first_offset: int, committed: int,
              cols: PaymentColumns, metrics: BatchMetrics,
              failed: Sequence[FailedMessage] = (),
              received: np.ndarray | None = None) -> tuple[list[WindowRow], int]:
        """Count a batch whose first message has ``first_offset``, given the partition's
        committed offset (call in the partition's context); returns the count rows and
        how many payments were too late. ``cols`` are the accepted payments and
        ``metrics`` theirs (:meth:`~pipeline.metrics.MetricEngine.extract_batch`).
        Failed messages count in ``failed|category=`` in the window of their broker
        timestamp. ``received`` (each payment's record time) caps how far a payment
        moves the stream clock (:func:`~pipeline.windows.late_mask`)."""
        cache = self.cache
        clock: StreamClock = cache.get(partition, CLOCK_TABLE, str(partition))
        clock.begin_batch(first_offset, committed)
        cache.put(partition, CLOCK_TABLE, str(partition), clock)
        if not len(cols) and not failed:
            return [], 0
        late = late_mask(clock, cols, self.finest, self.grace, received)
        rows = self._count_payments(partition, cols, ~late)
        entries = [(f.offset, window_start(f.first_seen.timestamp(), self.finest),
                    f.category.value) for f in failed]
        self._defer(partition, first_offset, (metrics, late, entries))
        return rows, int(late.sum())

    def _defer(self, partition: int, first_offset: int, batch: Pending) -> None:
        """Keep a counted batch's windowed metrics for the next :meth:`fold`: at once
        when it holds ``fold_events`` messages with those waiting. A batch of another
        configuration (other metrics), or one that starts at or below an offset waiting
        (delivered again), has those folded first: a fold's offsets ascend."""
        waiting = self._waiting.get(partition)
        if waiting is not None and (waiting.batches[0][0].shapes is not batch[0].shapes
                                    or first_offset <= waiting.last_offset):
            self.fold(partition)
            waiting = None
        if waiting is None:
            waiting = self._waiting[partition] = Waiting()
        waiting.batches.append(batch)
        metrics, _, entries = batch
        offsets = metrics.cols.offsets
        waiting.last_offset = max([waiting.last_offset, *offsets[-1:].tolist(),
                                   *(e[0] for e in entries)])
        waiting.messages += len(offsets) + len(entries)
        if waiting.messages >= self.fold_events:
            self.fold(partition)

    def fold(self, partition: int) -> None:
        """Add the windowed metrics of the partition's waiting batches to its values
        (call in the partition's context), computed for all of them at once."""
        waiting = self._waiting.pop(partition, None)
        if waiting is None:
            return
        pending = waiting.batches
        merged = BatchMetrics.concat([metrics for metrics, _, _ in pending], windowed=True)
        if merged is None:  # a metric's values changed type between batches: one by one
            for metrics, late, entries in pending:
                self._count_metrics(partition, WindowedBatch(metrics, self.finest, late,
                                                             entries, self.bounds))
            return
        late = (pending[0][1] if len(pending) == 1
                else np.concatenate([late for _, late, _ in pending]))
        entries = [entry for _, _, batch_entries in pending for entry in batch_entries]
        self._count_metrics(partition, WindowedBatch(merged, self.finest, late, entries,
                                                     self.bounds))

    def _fold_all(self) -> None:
        """:meth:`fold` every partition (readers of the metric values)."""
        for partition in list(self._waiting):
            with partition_context(self.app, placeholder_message(self.source_topic,
                                                                 partition)):
                self.fold(partition)

    def _count_payments(self, partition: int, cols: PaymentColumns,
                        on_time: np.ndarray) -> list[WindowRow]:
        rows: list[WindowRow] = []
        for size in self.sizes:
            table = counts_table(size)
            for start, channel, positions in count_groups(cols, on_time, size):
                key = table_key(start, channel, partition)
                counts = self.cache.get(partition, table, key)
                apply_columns(counts, cols, positions)
                # Marked dirty even when a replay added nothing: the changelog then
                # converges even if the crashed run's record never reached it.
                self.cache.put(partition, table, key, counts)
                rows.append(WindowRow(size, start, channel, partition, counts.copy()))
        return rows

    def _count_metrics(self, partition: int, batch: WindowedBatch) -> None:
        # one delta per finest window, shared by every window size that holds it
        deltas = batch.deltas()
        for size in self.sizes:
            table = metrics_table(size)
            targets: dict[int, list[int]] = {}
            for start in deltas:
                targets.setdefault(window_start(start, size), []).append(start)
            for target, starts in targets.items():
                key = metrics_key(target, partition)
                value: WindowMetrics = self.cache.get(partition, table, key)
                last = value.last_offset
                for start in starts:
                    # a window whose first entry is at or below the watermark is a
                    # replay: only its unseen entries count (merge_unseen's rule)
                    delta, newest = (deltas[start] if batch.first[start] > last
                                     else batch.delta(start, last))
                    value.merge(delta)
                    value.last_offset = max(value.last_offset, newest)
                self.cache.put(partition, table, key, value)

    # -- the sinks (a TableCache) --------------------------------------------------------

    def flush(self, partition: int, message: Message) -> int:
        """Write the partition's changed values to the tables (before each commit), its
        waiting batches folded in first."""
        if partition in self._waiting:
            with partition_context(self.app, message):
                self.fold(partition)
        return self.cache.flush(partition, message)

    def forget(self, partition: int) -> None:
        """Drop a revoked partition's values: its new owner replays those events."""
        self._waiting.pop(partition, None)
        self.cache.forget(partition)

    def take_partials(self, partition: int) -> HistogramPartials:
        """The windowed-metric rows of the values flushed since the last call
        (snapshotted: call on the event loop)."""
        partials = HistogramPartials()
        for name, key, value in self.cache.take_flushed(partition):
            size = self._metrics_tables.get(name)
            if size is not None:
                start, part = split_metrics_key(key)
                partials.add(size, start, part, value)
        return partials

    # -- the expiry job ------------------------------------------------------------------

    def expire(self, partitions: Iterable[int], retention: float) -> int:
        """Delete the windows of ``partitions`` that ended ``retention`` seconds before the
        partition's stream time (state stays bounded; PostgreSQL keeps the rows)."""
        deleted = 0
        for partition in partitions:
            message = placeholder_message(self.source_topic, partition)
            with partition_context(self.app, message):
                self.fold(partition)
                clock: StreamClock = self.cache.get(partition, CLOCK_TABLE, str(partition))
                if clock.last_offset < 0:
                    continue
                for size in self.sizes:
                    for name in (counts_table(size), metrics_table(size)):
                        keys = [k for k in self.windows.tables[name]
                                if key_partition(str(k)) == partition]
                        old = expired_keys(keys, size, clock.stream_time, retention)
                        if old:
                            self.cache.delete(partition, name, old, message)
                            deleted += len(old)
        if deleted:
            log.info("expired %d windows from the tables", deleted)
        return deleted

    # -- the web views -------------------------------------------------------------------

    def items(self, table: str) -> Iterator[tuple[str, Any]]:
        """This worker's values of ``table``, encoded, the newer cached ones on top (the
        waiting batches folded in first)."""
        if table in self._metrics_tables:
            self._fold_all()
        return self.cache.items(table)
