"""The raw-event lake writer: a Delta table on the local filesystem."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import msgspec
import pyarrow as pa
from deltalake import DeltaTable
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.parquet import _CHUNK_SCHEMA, RAW_SCHEMA, RawEventWriter, _broker_time, _rows
from storage.payment_arrays import payment_arrays
from storage.postgres import _transaction_copy
from tests.helpers import make_batch, read_lake


def offsets(root) -> list[int]:
    return sorted(read_lake(root)["offset"].to_pylist())


def test_flush_appends_one_commit_partitioned_by_hour_with_the_declared_schema(tmp_path):
    w = RawEventWriter(str(tmp_path), flush_rows=10_000, flush_seconds=60)
    batch = make_batch(0, 1000)
    w.append(batch)
    flushed = w.flush("payments", 0)
    assert flushed is not None and (flushed.first_offset, flushed.last_offset) == (0, 999)
    assert (flushed.rows, flushed.written) == (1000, 1000)
    table = DeltaTable(str(tmp_path))
    assert table.version() == 0 and table.transaction_version("payments-0") == 999
    assert table.metadata().partition_columns == ["date", "hour"]
    # 09:59:58 + 1000 events at 200/s of event time (5 s) crosses into 10:00
    files = table.file_uris()
    assert any("/date=2026-03-01/hour=09/" in f for f in files)
    assert any("/date=2026-03-01/hour=10/" in f for f in files)
    rows = table.to_pyarrow_table()
    assert rows.num_rows == 1000 and sorted(rows["offset"].to_pylist()) == list(range(1000))
    assert [rows.schema.field(name).name for name in RAW_SCHEMA.names] == RAW_SCHEMA.names
    by_offset = {r["offset"]: r for r in rows.to_pylist()}
    for m in batch.messages:
        assert by_offset[m.offset]["value"] == m.value  # raw bytes, byte for byte
        assert by_offset[m.offset]["accepted"] == (m.offset in batch.payments)
    assert offsets(tmp_path) == list(range(1000)), "polars reads it too"


def test_due_by_size_and_by_age(tmp_path):
    w = RawEventWriter(str(tmp_path), flush_rows=500, flush_seconds=0.2)
    w.append(make_batch(0, 100))
    assert w.due() == []
    assert 0 < w.seconds_until_due() <= 0.2
    assert w.due(now=time.monotonic() + 0.3) == [("payments", 0)]
    w.append(make_batch(100, 400))
    assert w.due() == [("payments", 0)]


def test_a_replay_after_a_crash_writes_only_what_the_table_lacks(tmp_path):
    """A flush whose offsets were never committed to Kafka is replayed with other batch
    boundaries: the table's transaction for the partition drops what it holds."""
    crashed = RawEventWriter(str(tmp_path))
    crashed.append(make_batch(0, 300))
    crashed.flush("payments", 0)  # committed to the table, then the worker died

    replay = RawEventWriter(str(tmp_path))  # restarts at the committed offset 0
    replay.append(make_batch(0, 500))  # different batch boundary this time
    flushed = replay.flush("payments", 0)
    assert flushed is not None and (flushed.rows, flushed.written) == (500, 200)
    assert offsets(tmp_path) == list(range(500))
    again = RawEventWriter(str(tmp_path))
    again.append(make_batch(100, 200))  # wholly written: no commit at all
    assert again.flush("payments", 0).written == 0
    assert DeltaTable(str(tmp_path)).version() == 1


def test_two_owners_of_one_partition_never_both_write_an_offset(tmp_path, monkeypatch):
    """A takeover: the old owner flushes while the new one replays, both from one table
    version. delta-rs refuses the second commit; its writer reloads and drops the rows."""
    old, new = RawEventWriter(str(tmp_path)), RawEventWriter(str(tmp_path))
    old.append(make_batch(0, 100))
    old.flush("payments", 0)
    stale = DeltaTable(str(tmp_path))  # what the new owner read: version 0
    reopen = new.table.open
    calls = []

    def first_stale():
        calls.append(1)
        return stale if len(calls) == 1 else reopen()

    monkeypatch.setattr(new.table, "open", first_stale)
    old.append(make_batch(100, 100))
    new.append(make_batch(100, 150))
    assert old.flush("payments", 0).written == 100
    assert new.flush("payments", 0).written == 50  # refused once, reloaded, 200..249 only
    assert new.table.retried == 1
    assert offsets(tmp_path) == list(range(250))


def test_partitions_are_independent_and_forget_drops_a_buffer(tmp_path):
    w = RawEventWriter(str(tmp_path))
    w.append(make_batch(0, 50, partition=0))
    w.append(make_batch(0, 70, partition=1))
    w.forget("payments", 0)
    assert w.buffered() == [("payments", 1)]
    w.flush("payments", 1)
    t = read_lake(tmp_path)
    assert set(t["partition"].to_pylist()) == {1} and t.num_rows == 70


def test_redelivered_offsets_are_buffered_once(tmp_path):
    """A seek back to the committed offset re-delivers batches already in flight."""
    w = RawEventWriter(str(tmp_path))
    w.append(make_batch(0, 100))
    w.append(make_batch(0, 150))  # 0..99 again, then 100..149
    w.flush("payments", 0)
    w.append(make_batch(120, 80))  # 120..149 were flushed already
    w.flush("payments", 0)
    assert offsets(tmp_path) == list(range(200))


def reference_rows(batch) -> tuple[dict, list[int]]:
    """The lake's rows as the writer made them a row at a time (the reference for the
    columns made whole): each value through datetime and pa.array."""
    columns: dict[str, list] = {f.name: [] for f in _CHUNK_SCHEMA}
    hours = []
    arrival = datetime.fromtimestamp(batch.arrival, UTC)
    failed = {f.offset: f for f in batch.failed}
    for m in batch.messages:
        p = batch.payments.get(m.offset)
        f = failed.get(m.offset)
        row = {"offset": m.offset, "key": m.key, "value": m.value,
               "broker_timestamp": _broker_time(m.timestamp), "arrival_time": arrival,
               "accepted": p is not None,
               "error_category": None if p is not None else str(f.category) if f else "unknown"}
        for name in ("transaction_id", "event_time", "merchant_id", "amount_minor",
                     "currency", "channel", "status", "customer_id"):
            row[name] = None if p is None else getattr(p, name)
        for name, value in row.items():
            columns[name].append(value)
        hours.append(int(p.event_time.timestamp() // 3600) if p is not None
                     else int(batch.arrival // 3600))
    return {f.name: pa.array(columns[f.name], f.type) for f in _CHUNK_SCHEMA}, hours


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_rows_made_whole_are_the_rows_made_one_at_a_time(data):
    """Record timestamps and event times anywhere a producer may set them (none, zero,
    before 1970, past 2038 and 9999, whole milliseconds as Kafka has them), failed
    messages among the payments."""
    n = data.draw(st.integers(1, 40))
    batch = make_batch(0, n, invalid=data.draw(st.sampled_from([0.0, 0.3, 1.0])))
    millis = st.one_of(st.none(), st.just(0), st.integers(-10**13, 4 * 10**14))
    for m in batch.messages:
        ms = data.draw(millis)
        m.timestamp = None if ms is None else ms / 1000.0
    for p in batch.payments.values():
        if data.draw(st.booleans()):
            when = datetime(1, 1, 1, tzinfo=UTC) + timedelta(microseconds=data.draw(
                st.integers(0, 315537897599999999)))
            msgspec.structs.force_setattr(p, "event_time", when)
            msgspec.structs.force_setattr(p, "event_ts", when.timestamp())
    chunk, hours = _rows([(batch, batch.messages)])
    expected, expected_hours = reference_rows(batch)
    for name, column in expected.items():
        assert chunk.column(name).equals(column), name
    assert hours.tolist() == expected_hours


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_the_rows_of_several_batches_are_their_rows_one_after_another(data):
    """A sink round's batches of one partition make one chunk: each batch's rows as it
    alone makes them (its own arrival time, its own failures), in order, a first batch
    cut short (a redelivery's rows skipped) included."""
    batches, first = [], 0
    for k in range(data.draw(st.integers(1, 5))):
        n = data.draw(st.integers(1, 12))
        batch = make_batch(first, n, invalid=data.draw(st.sampled_from([0.0, 0.3, 1.0])))
        batch.arrival = 1_780_000_000 + 1800.5 * k + data.draw(st.integers(0, 10**6)) / 1e3
        batches.append(batch)
        first += n
    skip = data.draw(st.integers(0, len(batches[0].messages) - 1))
    parts = [(batches[0], batches[0].messages[skip:])] + [(b, b.messages) for b in batches[1:]]
    chunk, hours = _rows(parts)
    expected = [reference_rows(b) for b in batches]
    for name in expected[0][0]:
        whole = pa.concat_arrays([columns[name] for columns, _ in expected])
        assert chunk.column(name).equals(whole.slice(skip)), name
    assert hours.tolist() == [h for _, hs in expected for h in hs][skip:]


def test_the_lake_takes_the_payments_arrays_the_copy_was_made_from():
    """No second conversion: once the PostgreSQL sink made a round's COPY input, the lake's
    payment fields come from the same arrays (here, the payments are gone meanwhile)."""
    batches = [make_batch(0, 30, partition=0), make_batch(30, 20, partition=0),
               make_batch(0, 25, partition=1)]
    expected = [reference_rows(b)[0] for b in batches]
    _transaction_copy(batches)
    made = [b.arrow for b in batches]
    for b in batches:
        b.payments = dict.fromkeys(b.payments)
    assert payment_arrays(batches) == made
    chunk, _ = _rows([(batches[0], batches[0].messages[5:]), (batches[1], batches[1].messages)])
    for name in expected[0]:
        whole = pa.concat_arrays([expected[0][name].slice(5), expected[1][name]])
        assert chunk.column(name).equals(whole), name
    chunk, _ = _rows([(batches[2], batches[2].messages)])
    assert chunk.column("transaction_id").equals(expected[2]["transaction_id"])


def test_a_sink_round_makes_one_chunk_a_partition(tmp_path):
    w = RawEventWriter(str(tmp_path), flush_rows=10_000, flush_seconds=60)
    w.append_many([make_batch(0, 30, partition=0), make_batch(0, 20, partition=1),
                   make_batch(30, 10, partition=0), make_batch(0, 40, partition=0)])
    buffers = {key[1]: buf for key, buf in w._buffers.items()}
    assert [len(buffers[0].chunks), len(buffers[1].chunks)] == [1, 1]
    assert buffers[0].rows == 40 and buffers[1].rows == 20  # 0..39 once: the redelivery skipped
    assert buffers[0].chunks[0].column("offset").to_pylist() == list(range(40))
