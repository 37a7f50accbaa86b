"""Windowed counts of accepted payments: a 5-minute and an hourly table.

Keys are ``"<window_start>|<channel>|<partition>"`` (window start in POSIX
seconds). Each source partition keeps its own key, so one worker owns each
value outright and a rebalance moves it with its changelog partition; a
reader adds the partitions up. Values are :class:`pipeline.windows.WindowCounts`
as JSON, written once per key per batch.

Faust's ``.tumbling()`` wrapper is not used: it needs a stream's current
event for every update and expires windows on wall-clock time (see
docs/adr/0001-batch-path.md); the window is part of the key instead.
"""

from __future__ import annotations

from faust.types import TableT

from app.faust_app import PaymentApp
from pipeline.windows import WINDOW_SIZES

TABLE_NAMES = {300: "window-counts-5m", 3600: "window-counts-1h"}


def declare_tables(app: PaymentApp) -> dict[int, TableT]:
    """Declare one table per window size, partitioned like ``payments``."""
    return {
        size: app.Table(
            TABLE_NAMES[size],
            default=None,
            partitions=app.settings.topic_partitions,
            help=f"accepted payments per {size} s event-time window, channel and partition",
        )
        for size in WINDOW_SIZES
    }


def table_key(window_start: int, channel: str, partition: int) -> str:
    return f"{window_start}|{channel}|{partition}"


def split_key(key: str) -> tuple[int, str, int]:
    start, channel, partition = key.split("|")
    return int(start), channel, int(partition)
