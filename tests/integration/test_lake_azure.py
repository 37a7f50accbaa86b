"""The raw-event lake on Azure Blob Storage (abfs:// through adlfs), against Azurite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import adlfs
import pyarrow.dataset as ds
import pytest

from app.settings import Settings
from storage.parquet import RAW_SCHEMA, RawEventWriter
from storage.retention import purge_lake
from tests.helpers import make_batch


@pytest.fixture
def lake(azurite, monkeypatch):
    """An empty container; yields (url, storage options, filesystem)."""
    container = f"lake-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    settings = Settings(raw_events_url=f"abfs://{container}/raw")
    options = settings.lake_storage_options
    fs = adlfs.AzureBlobFileSystem(**options)
    fs.mkdir(container)
    return settings.raw_events_url, options, fs, f"{container}/raw"


def read(fs, root):
    return ds.dataset(root, filesystem=fs, format="parquet", partitioning="hive").to_table()


def test_flush_writes_hive_layout_to_blob_storage(lake):
    url, options, fs, root = lake
    w = RawEventWriter(url, flush_rows=10_000, flush_seconds=60, storage_options=options)
    batch = make_batch(0, 1000)
    w.append(batch)
    flushed = w.flush("payments", 0)
    assert flushed is not None
    blobs = fs.find(root)
    assert {b.rsplit("/", 1)[1] for b in blobs if b.endswith(".parquet")} == {
        "payments-0-0-999.parquet"}
    assert any("/date=2026-03-01/hour=09/" in b for b in blobs)
    assert any("/date=2026-03-01/hour=10/" in b for b in blobs)
    assert not [b for b in blobs if b.endswith(".tmp")]
    table = read(fs, root)
    assert sorted(table["offset"].to_pylist()) == list(range(1000))
    assert [table.schema.field(n) for n in RAW_SCHEMA.names] == list(RAW_SCHEMA)
    rows = {r["offset"]: r["value"] for r in table.to_pylist()}
    assert all(rows[m.offset] == m.value for m in batch.messages)  # byte for byte


def test_crash_mid_batch_then_replay_reads_back_exactly_once(lake):
    url, options, fs, root = lake
    crashed = RawEventWriter(url, storage_options=options)
    crashed.append(make_batch(0, 100))
    crashed.flush("payments", 0)
    crashed.committed("payments", 0, 100)
    crashed.append(make_batch(100, 150))
    crashed.flush("payments", 0)  # written, never committed: the worker died here
    crashed.append(make_batch(250, 40))  # buffered only: lost with the process

    replay = RawEventWriter(url, storage_options=options)  # resumes at committed offset 100
    replay.append(make_batch(100, 120))  # other batch boundaries this time
    replay.append(make_batch(220, 80))
    replay.flush("payments", 0)
    offsets = read(fs, root)["offset"].to_pylist()
    assert sorted(offsets) == list(range(300))


def test_retention_deletes_old_day_folders_on_blob_storage(lake):
    url, options, fs, root = lake
    w = RawEventWriter(url, storage_options=options)
    w.append(make_batch(0, 50))  # event time 2026-03-01 (failed ones: arrival time, today)
    w.flush("payments", 0)
    fs.pipe(f"{root}/date=2026-11-21/hour=00/payments-1-0-0.parquet", b"x")
    removed = purge_lake(fs, root, 90, now=datetime(2026, 11, 22, tzinfo=UTC))
    assert [p.rsplit("/", 1)[1] for p in removed] == ["date=2026-03-01"]
    left = {p.rsplit("/", 1)[1] for p in fs.ls(root)}
    assert "date=2026-03-01" not in left and {"_inflight", "date=2026-11-21"} <= left


def test_compaction_on_blob_storage_keeps_each_event_once(lake):
    from storage.compaction import compact
    from storage.lake import RawEventLake

    url, options, fs, root = lake
    w = RawEventWriter(url, storage_options=options)
    for first in range(0, 1000, 100):  # ten small flushes, each committed
        w.append(make_batch(first, 100))
        flushed = w.flush("payments", 0)
        w.committed("payments", 0, flushed.last_offset + 1)
    w.append(make_batch(1000, 10))  # and an eleventh, so the ten are all final
    w.flush("payments", 0)
    before = sorted(read(fs, root)["offset"].to_pylist())
    assert before == list(range(1010))
    n_before = len([b for b in fs.find(root) if b.endswith(".parquet")])

    report = compact(fs, root, before=datetime(2026, 3, 2, tzinfo=UTC))
    blobs = [b for b in fs.find(root) if b.endswith(".parquet")]
    assert report.written >= 1 and len(blobs) < n_before
    assert any(b.rsplit("/", 1)[1].startswith("payments-0-0-") for b in blobs), blobs
    assert sorted(read(fs, root)["offset"].to_pylist()) == before
    lake_reader = RawEventLake(url, options)
    now = datetime.now(UTC)
    batches = [*lake_reader.get_events_by_time_range(datetime(2026, 3, 1, tzinfo=UTC),
                                                     datetime(2026, 3, 2, tzinfo=UTC)),
               *lake_reader.get_events_by_time_range(  # failed rows: by arrival (now)
                   now - timedelta(hours=2), now + timedelta(hours=2))]
    assert sorted(o for b in batches for o in b.column("offset").to_pylist()) == before
