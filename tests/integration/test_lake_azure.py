"""The raw-event lake's Delta table on Azure Blob Storage (abfs://, delta-rs's object
store), against Azurite: the append, a replay, compaction, retention and the readers."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import adlfs
import pytest
from deltalake import DeltaTable

from runtime.settings import Settings
from storage.compaction import compact
from storage.delta import RawTable, delta_storage_options
from storage.lake import RawEventLake
from storage.parquet import RAW_SCHEMA, RawEventWriter
from storage.retention import purge_lake
from tests.helpers import make_batch, read_lake


@pytest.fixture
def lake(azurite, monkeypatch):
    """An empty container; yields (url, fsspec options, delta-rs options, filesystem)."""
    container = f"lake-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    settings = Settings(raw_events_url=f"abfs://{container}/raw")
    options = settings.lake_storage_options
    fs = adlfs.AzureBlobFileSystem(**options)
    fs.mkdir(container)
    return settings.raw_events_url, options, delta_storage_options(
        settings.raw_events_url, options), fs


def offsets(url: str, delta_options: dict) -> list[int]:
    return sorted(read_lake(url, delta_options)["offset"].to_pylist())


def test_a_flush_is_one_delta_commit_on_blob_storage(lake):
    url, options, delta_options, fs = lake
    w = RawEventWriter(url, flush_rows=10_000, flush_seconds=60, storage_options=options)
    batch = make_batch(0, 1000)
    w.append(batch)
    flushed = w.flush("payments", 0)
    assert flushed is not None and flushed.written == 1000
    table = DeltaTable(url, storage_options=delta_options)
    assert table.transaction_version("payments-0") == 999
    files = table.file_uris()
    assert any("/date=2026-03-01/hour=09/" in f for f in files)
    assert any("/date=2026-03-01/hour=10/" in f for f in files)
    assert any(b.endswith("_delta_log/00000000000000000000.json") for b in fs.find(url[7:]))
    rows = table.to_pyarrow_table()
    assert [rows.schema.field(n).name for n in RAW_SCHEMA.names] == RAW_SCHEMA.names
    by_offset = {r["offset"]: r["value"] for r in rows.to_pylist()}
    assert all(by_offset[m.offset] == m.value for m in batch.messages)  # byte for byte
    assert offsets(url, delta_options) == list(range(1000)), "polars reads it on Azure"


def test_a_replay_after_a_crash_reads_back_exactly_once(lake):
    url, options, delta_options, _ = lake
    crashed = RawEventWriter(url, storage_options=options)
    crashed.append(make_batch(0, 100))
    crashed.flush("payments", 0)
    crashed.append(make_batch(100, 150))
    crashed.flush("payments", 0)  # in the table, but the Kafka commit never came
    crashed.append(make_batch(250, 40))  # buffered only: lost with the process

    replay = RawEventWriter(url, storage_options=options)  # resumes at committed offset 100
    replay.append(make_batch(100, 120))  # other batch boundaries this time
    replay.append(make_batch(220, 80))
    assert replay.flush("payments", 0).written == 50
    assert offsets(url, delta_options) == list(range(300))


def test_retention_and_compaction_on_blob_storage(lake):
    url, options, delta_options, _ = lake
    w = RawEventWriter(url, storage_options=options)
    for first in range(0, 1000, 100):  # ten small flushes
        w.append(make_batch(first, 100))
        w.flush("payments", 0)
    table = RawTable(url, options)
    files = len(DeltaTable(url, storage_options=delta_options).file_uris())
    report = compact(table, before=datetime(2026, 3, 2, tzinfo=UTC))
    assert report["removed"] > report["added"] >= 1
    assert len(DeltaTable(url, storage_options=delta_options).file_uris()) < files
    assert offsets(url, delta_options) == list(range(1000))

    reader = RawEventLake(url, options)
    now = datetime.now(UTC)
    batches = [*reader.get_events_by_time_range(datetime(2026, 3, 1, tzinfo=UTC),
                                                datetime(2026, 3, 2, tzinfo=UTC)),
               *reader.get_events_by_time_range(  # failed rows: by arrival (now)
                   now - timedelta(hours=2), now + timedelta(hours=2))]
    assert sorted(o for b in batches for o in b.column("offset").to_pylist()) == list(
        range(1000))

    # the accepted rows are dated 2026-03-01; the failed ones today (arrival time)
    deleted, _ = purge_lake(table, 90, now=datetime(2026, 11, 22, tzinfo=UTC))
    left = read_lake(url, delta_options)
    assert deleted == 1000 - left.num_rows > 0
    assert set(left["date"].to_pylist()) == {f"{now:%Y-%m-%d}"}
