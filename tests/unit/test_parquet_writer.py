"""The raw-event lake writer on the local filesystem."""

from __future__ import annotations

import time

import pyarrow.dataset as ds

from storage.parquet import RAW_SCHEMA, RawEventWriter
from tests.helpers import make_batch


def read(root) -> ds.Dataset:
    return ds.dataset(root, format="parquet", partitioning="hive")


def test_flush_writes_hive_layout_with_the_declared_schema(tmp_path):
    w = RawEventWriter(str(tmp_path), flush_rows=10_000, flush_seconds=60)
    batch = make_batch(0, 1000)
    w.append(batch)
    flushed = w.flush("payments", 0)
    assert flushed is not None and (flushed.first_offset, flushed.last_offset) == (0, 999)
    names = {p.split("/")[-1] for p in flushed.paths}
    assert names == {"payments-0-0-999.parquet"}
    # 09:59:58 + 1000 events at 200/s of event time (5 s) crosses into 10:00
    assert any("/date=2026-03-01/hour=09/" in p for p in flushed.paths)
    assert any("/date=2026-03-01/hour=10/" in p for p in flushed.paths)
    table = read(tmp_path).to_table()
    assert table.num_rows == 1000
    assert sorted(table["offset"].to_pylist()) == list(range(1000))
    assert [table.schema.field(name) for name in RAW_SCHEMA.names] == list(RAW_SCHEMA)
    rows = {r["offset"]: r for r in table.to_pylist()}
    for m in batch.messages:
        assert rows[m.offset]["value"] == m.value  # raw bytes, byte for byte
        assert rows[m.offset]["accepted"] == (m.offset in batch.payments)
    assert not list(tmp_path.rglob(".*.tmp"))


def test_due_by_size_and_by_age(tmp_path):
    w = RawEventWriter(str(tmp_path), flush_rows=500, flush_seconds=0.2)
    w.append(make_batch(0, 100))
    assert w.due() == []
    assert 0 < w.seconds_until_due() <= 0.2
    assert w.due(now=time.monotonic() + 0.3) == [("payments", 0)]
    w.append(make_batch(100, 400))
    assert w.due() == [("payments", 0)]


def test_replay_after_a_crash_rewrites_instead_of_adding(tmp_path):
    """A flush whose offsets were never committed is replaced by the replay's files."""
    crashed = RawEventWriter(str(tmp_path))
    crashed.append(make_batch(0, 300))
    crashed.flush("payments", 0)  # files written, then the worker died before committing
    assert read(tmp_path).count_rows() == 300

    replay = RawEventWriter(str(tmp_path))  # restarts at committed offset 0
    replay.append(make_batch(0, 500))  # different batch boundary this time
    replay.flush("payments", 0)
    table = read(tmp_path).to_table()
    assert table.num_rows == 500
    assert sorted(table["offset"].to_pylist()) == list(range(500))


def test_committed_files_survive_a_restart(tmp_path):
    first = RawEventWriter(str(tmp_path))
    first.append(make_batch(0, 200))
    first.flush("payments", 0)  # committed: the next run starts at 200

    second = RawEventWriter(str(tmp_path))
    second.append(make_batch(200, 100))
    second.flush("payments", 0)
    assert sorted(read(tmp_path).to_table()["offset"].to_pylist()) == list(range(300))


def test_partitions_are_independent_and_forget_drops_a_buffer(tmp_path):
    w = RawEventWriter(str(tmp_path))
    w.append(make_batch(0, 50, partition=0))
    w.append(make_batch(0, 70, partition=1))
    w.forget("payments", 0)
    assert w.buffered() == [("payments", 1)]
    w.flush("payments", 1)
    t = read(tmp_path).to_table()
    assert set(t["partition"].to_pylist()) == {1} and t.num_rows == 70


def test_redelivered_offsets_are_buffered_once(tmp_path):
    """A seek back to the committed offset re-delivers batches already in flight."""
    w = RawEventWriter(str(tmp_path))
    w.append(make_batch(0, 100))
    w.append(make_batch(0, 150))  # 0..99 again, then 100..149
    w.flush("payments", 0)
    w.append(make_batch(120, 80))  # 120..149 were flushed already
    w.flush("payments", 0)
    assert sorted(read(tmp_path).to_table()["offset"].to_pylist()) == list(range(200))


def test_every_unconfirmed_flush_is_cleaned_on_replay(tmp_path):
    crashed = RawEventWriter(str(tmp_path))
    crashed.append(make_batch(0, 100))
    crashed.flush("payments", 0)
    crashed.committed("payments", 0, 100)
    crashed.append(make_batch(100, 100))
    crashed.flush("payments", 0)  # its commit failed ...
    crashed.append(make_batch(200, 100))
    crashed.flush("payments", 0)  # ... and so did this one, then the worker died

    replay = RawEventWriter(str(tmp_path))  # resumes at the committed offset 100
    replay.append(make_batch(100, 250))
    replay.flush("payments", 0)
    assert sorted(read(tmp_path).to_table()["offset"].to_pylist()) == list(range(350))
