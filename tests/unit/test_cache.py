"""The write-back cache in front of the window tables: one table write per dirty key per
flush, in the flushed partition's context, and nothing of a revoked partition kept."""

from __future__ import annotations

from faust.streams import current_event

from runtime.faust_app import create_app
from runtime.settings import Settings
from tables.cache import WriteBackCache
from tables.context import placeholder_message


class Value:
    def __init__(self, n: int = 0) -> None:
        self.n = n

    def to_dict(self) -> dict:
        return {"n": self.n}


class FakeTable(dict):
    """A table that records every write with the partition of the current event."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple] = []
        self.reads = 0

    @property
    def data(self) -> dict:
        return self

    def get(self, key, default=None):
        self.reads += 1
        return super().get(key, default)

    def __setitem__(self, key, value) -> None:
        event = current_event()
        self.writes.append((key, value, event.message.partition if event else None))
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        event = current_event()
        self.writes.append((key, None, event.message.partition if event else None))
        super().__delitem__(key)


def cache_over(tmp_path, stored=None):
    app = create_app(Settings(store_url="memory://", app_datadir=str(tmp_path),
                              broker_url="kafka://127.0.0.1:1"))
    table = FakeTable()
    dict.update(table, stored or {})
    decode = lambda data: Value(data["n"] if data else 0)  # noqa: E731
    return WriteBackCache(app, {"t": table}, {"t": decode}), table


def test_a_value_is_decoded_once_and_written_once_per_flush(tmp_path):
    cache, table = cache_over(tmp_path, {"k": {"n": 5}})
    for _ in range(3):  # three batches touch the same key
        value = cache.get(1, "t", "k")
        value.n += 1
        cache.put(1, "t", "k", value)
    assert table.reads == 1 and table.writes == []  # nothing reaches the table yet
    assert cache.flush(1, placeholder_message("payments", 1)) == 1
    assert table.writes == [("k", {"n": 8}, 1)]  # one write, in partition 1's context
    assert cache.flush(1, placeholder_message("payments", 1)) == 0  # nothing dirty now
    assert [(t, k, v.n) for t, k, v in cache.take_flushed(1)] == [("t", "k", 8)]
    assert cache.take_flushed(1) == []


def test_partitions_flush_and_forget_independently(tmp_path):
    cache, table = cache_over(tmp_path)
    cache.put(0, "t", "a", Value(1))
    cache.put(3, "t", "b", Value(2))
    cache.forget(3)  # revoked before its commit: the new owner replays those events
    assert cache.flush(3, placeholder_message("payments", 3)) == 0
    assert cache.flush(0, placeholder_message("payments", 0)) == 1
    assert table.writes == [("a", {"n": 1}, 0)]
    assert cache.get(3, "t", "b").n == 0  # read again from the table, which never had it


def test_items_show_cached_values_over_stored_ones_and_delete_tombstones(tmp_path):
    cache, table = cache_over(tmp_path, {"old": {"n": 1}, "k": {"n": 2}})
    value = cache.get(0, "t", "k")
    value.n = 9
    cache.put(0, "t", "k", value)
    assert dict(cache.items("t")) == {"old": {"n": 1}, "k": {"n": 9}}
    cache.delete(0, "t", ["old", "k"], placeholder_message("payments", 0))
    assert table.writes == [("old", None, 0), ("k", None, 0)]
    assert cache.flush(0, placeholder_message("payments", 0)) == 0  # deleted, not dirty
    assert dict(cache.items("t")) == {}
