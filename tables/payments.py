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

Faust's ``.tumbling()`` wrapper is not used: it needs a stream's current
event for every update, expires windows on wall-clock time, and hands
``on_window_close`` the raw per-key value rather than the window's aggregate
(docs/adr/0005-windows.md); the window is part of the key instead, and
:func:`expired_keys` expires windows on stream time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from faust.types import TableT

from app.faust_app import PaymentApp
from pipeline.windows import StreamClock, WindowCounts, WindowMetrics
from tables.cache import WriteBackCache

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


def declare_tables(app: PaymentApp, sizes: Iterable[int] = (300, 3600)) -> WindowTables:
    """Declare the window tables and the stream clock, partitioned like ``payments``."""
    sizes = tuple(sorted(sizes))
    partitions = app.settings.topic_partitions
    tables: dict[str, TableT] = {}
    for size in sizes:
        tables[counts_table(size)] = app.Table(
            counts_table(size), default=None, partitions=partitions,
            help=f"accepted payments per {size} s event-time window, channel and partition")
        tables[metrics_table(size)] = app.Table(
            metrics_table(size), default=None, partitions=partitions,
            help=f"windowed metric histograms per {size} s event-time window and partition")
    tables[CLOCK_TABLE] = app.Table(CLOCK_TABLE, default=None, partitions=partitions,
                                    help="stream time (newest event time) per partition")
    return WindowTables(sizes, tables)


def window_cache(app: Any, windows: WindowTables,
                 bounds: Callable[[str], tuple[float, ...]]) -> WriteBackCache:
    """The write-back cache over every window table and the stream clock."""
    decoders: dict[str, Callable[[Any], Any]] = {CLOCK_TABLE: StreamClock.from_dict}
    for size in windows.sizes:
        decoders[counts_table(size)] = WindowCounts.from_dict
        decoders[metrics_table(size)] = lambda data: WindowMetrics.from_dict(data, bounds)
    return WriteBackCache(app, windows.tables, decoders)


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


def key_partition(key: str) -> int:
    return int(key.rsplit("|", 1)[1])


def expired_keys(keys: Iterable[str], size: int, stream_time: float,
                 retention: float) -> list[str]:
    """Keys of windows that ended ``retention`` seconds or more before ``stream_time``."""
    return [k for k in keys if key_window_start(k) + size + retention <= stream_time]
