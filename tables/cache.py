"""A write-back cache in front of the window tables (Kafka Streams' record cache).

The ingest handler reads and updates window values here; each value is written
to its Faust table (and so to the changelog) once per commit of its
partition, however many batches touched it. At 5,000 events/s a batch holds
a few dozen events and touches about as many keys, so writing through costs
nearly one changelog record per event; with the cache it is one per key per
commit interval. Nothing is lost by waiting: an offset is committed only
after :meth:`WindowCache.flush` has written every value that counts it, and
a crash before that replays the events (the watermark in each value keeps
replays from counting twice).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from faust.types import Message, TableT

from app.batching import partition_context
from pipeline.windows import WindowCounts


class TableCache(Protocol):
    """A write-back cache the sinks flush before each commit of a partition."""

    def flush(self, partition: int, message: Message) -> int: ...

    def forget(self, partition: int) -> None: ...


CacheKey = tuple[int, str]  # (window size in seconds, table key)


class WindowCache:
    """Dirty window values per source partition, flushed before each commit."""

    def __init__(self, app: Any, tables: dict[int, TableT]) -> None:
        self.app = app
        self.tables = tables
        self._dirty: dict[int, dict[CacheKey, WindowCounts]] = {}

    def get(self, partition: int, size: int, key: str) -> WindowCounts:
        """The newest value: cached, else from the table (call in the partition's context)."""
        dirty = self._dirty.get(partition)
        if dirty is not None and (size, key) in dirty:
            return dirty[(size, key)]
        return WindowCounts.from_dict(self.tables[size].get(key))

    def put(self, partition: int, size: int, key: str, value: WindowCounts) -> None:
        self._dirty.setdefault(partition, {})[(size, key)] = value

    def flush(self, partition: int, message: Message) -> int:
        """Write the partition's dirty values to the tables; returns how many."""
        dirty = self._dirty.pop(partition, None)
        if not dirty:
            return 0
        with partition_context(self.app, message):
            for (size, key), value in dirty.items():
                self.tables[size][key] = value.to_dict()
        return len(dirty)

    def forget(self, partition: int) -> None:
        """Drop a revoked partition's values: its new owner replays those events."""
        self._dirty.pop(partition, None)

    def items(self, size: int) -> Iterator[tuple[str, dict]]:
        """Table items of one window size with the cached values on top (for the web UI)."""
        cached = {key: value for dirty in self._dirty.values()
                  for (s, key), value in dirty.items() if s == size}
        for key, value in self.tables[size].data.items():
            if key not in cached:
                yield key, value
        for key, value in cached.items():
            yield key, value.to_dict()
