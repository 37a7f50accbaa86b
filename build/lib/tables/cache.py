"""A write-back cache in front of the window tables (Kafka Streams' record cache).

The ingest handler reads and updates window values here; each value is written
to its Faust table (and so to the changelog) once per commit of its
partition, however many batches touched it. At 5,000 events/s a batch holds
a few dozen events and touches about as many keys, so writing through costs
nearly one changelog record per event; with the cache it is one per key per
commit interval. Nothing is lost by waiting: an offset is committed only
after :meth:`WriteBackCache.flush` has written every value that counts it, and
a crash before that replays the events (the watermark in each value keeps
replays from counting twice).

Values stay decoded in memory between commits (a window's metrics are a few
hundred histograms: decoding them for every batch would cost more than
counting); a revoked partition's values are dropped and reloaded by the next
owner from the table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from faust.types import AppT, Message, TableT

from tables.context import partition_context


class TableCache(Protocol):
    """A write-back cache the sinks flush before each commit of a partition."""

    def flush(self, partition: int, message: Message) -> int: ...

    def forget(self, partition: int) -> None: ...


Ref = tuple[str, str]  # (table name, key)


class WriteBackCache:
    """Decoded table values per source partition; dirty ones written before each commit.

    ``decoders[table](stored value or None)`` builds a value object; value objects
    have ``to_dict()``.
    """

    def __init__(self, app: AppT, tables: dict[str, TableT],
                 decoders: dict[str, Callable[[Any], Any]]) -> None:
        self.app = app
        self.tables = tables
        self.decoders = decoders
        self._values: dict[int, dict[Ref, Any]] = {}
        self._dirty: dict[int, set[Ref]] = {}
        self._flushed: dict[int, list[tuple[str, str, Any]]] = {}

    def get(self, partition: int, table: str, key: str) -> Any:
        """The newest value (call in the partition's context: a miss reads the table)."""
        values = self._values.setdefault(partition, {})
        value = values.get((table, key))
        if value is None:
            value = values[(table, key)] = self.decoders[table](self.tables[table].get(key))
        return value

    def put(self, partition: int, table: str, key: str, value: Any) -> None:
        self._values.setdefault(partition, {})[(table, key)] = value
        self._dirty.setdefault(partition, set()).add((table, key))

    def flush(self, partition: int, message: Message) -> int:
        """Write the partition's dirty values to the tables; returns how many."""
        dirty = self._dirty.pop(partition, None)
        if not dirty:
            return 0
        values = self._values[partition]
        flushed = self._flushed.setdefault(partition, [])
        with partition_context(self.app, message):
            for table, key in sorted(dirty):
                value = values[(table, key)]
                self.tables[table][key] = value.to_dict()
                flushed.append((table, key, value))
        return len(dirty)

    def take_flushed(self, partition: int) -> list[tuple[str, str, Any]]:
        """Values flushed since the last call: (table, key, value object)."""
        return self._flushed.pop(partition, [])

    def delete(self, partition: int, table: str, keys: list[str], message: Message) -> None:
        """Delete expired keys from memory and from the table (a changelog tombstone each)."""
        values = self._values.get(partition, {})
        dirty = self._dirty.get(partition, set())
        with partition_context(self.app, message):
            for key in keys:
                values.pop((table, key), None)
                dirty.discard((table, key))
                if key in self.tables[table]:
                    del self.tables[table][key]

    def forget(self, partition: int) -> None:
        """Drop a revoked partition's values: its new owner replays those events."""
        self._values.pop(partition, None)
        self._dirty.pop(partition, None)
        self._flushed.pop(partition, None)

    def items(self, table: str) -> Iterator[tuple[str, Any]]:
        """Stored values of one table with the newer cached values on top (web UI), encoded."""
        cached = {key: value for values in self._values.values()
                  for (t, key), value in values.items() if t == table}
        for key, value in self.tables[table].data.items():
            if key not in cached and value is not None:
                yield key, value
        for key, value in cached.items():
            yield key, value.to_dict()
