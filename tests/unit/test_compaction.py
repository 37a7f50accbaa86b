"""Lake compaction (Delta optimize) and the migration of a lake of the old Parquet layout
into the Delta table, in place: every row once, before and after, read by polars."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from simulator.generator import PaymentGenerator, load_scenario
from storage.compaction import compact, conformed, migrate
from storage.delta import RawTable
from storage.parquet import RawEventWriter
from tests.helpers import batch_of, read_lake

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
LATER = START + timedelta(days=1)


def write_lake(root, batches: int = 12, per_batch: int = 300) -> list:
    """Two partitions, each flushed every batch: many small files across two hours."""
    scenario = load_scenario()
    scenario["events_per_second"] = 1
    scenario["late_event_ratio"] = 0.0
    events = list(PaymentGenerator(scenario, seed=9, invalid_ratio=0.1, start=START)
                  .events(2 * batches * per_batch))
    writer = RawEventWriter(str(root), flush_rows=10**9, flush_seconds=10**9)
    arrival = START.timestamp() + 600
    for partition in (0, 1):
        mine = events[partition::2]
        for b in range(batches):
            first = b * per_batch
            writer.append(batch_of(mine[first:first + per_batch], partition, first, arrival))
            writer.flush("payments", partition)
    return events


def coordinates(root) -> Counter:
    t = read_lake(root)
    return Counter(zip(t["partition"].to_pylist(), t["offset"].to_pylist(), strict=True))


def faust(*args: str, root: Path) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).with_name("faust"))
    env = {**os.environ, "RAW_EVENTS_URL": str(root), "BROKER_URL": "kafka://127.0.0.1:1",
           "STORE_URL": "memory://", "APP_DATADIR": str(root.parent / f"{root.name}-faust")}
    return subprocess.run([exe, "-A", "app", *args], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_compaction_is_delta_optimize_and_every_row_stays_once(tmp_path):
    events = write_lake(tmp_path)
    before = coordinates(tmp_path)
    assert sum(before.values()) == len(events) and max(before.values()) == 1
    files = len(DeltaTable(str(tmp_path)).file_uris())
    report = compact(RawTable(str(tmp_path)), before=LATER)
    table = DeltaTable(str(tmp_path))
    assert report["removed"] == files and report["added"] < files
    assert len(table.file_uris()) == report["added"]
    assert coordinates(tmp_path) == before, "polars reads the new files only"
    assert table.transaction_version("payments-1") == len(events) // 2 - 1
    again = compact(RawTable(str(tmp_path)), before=LATER)
    assert again == {"removed": 0, "added": 0}


def test_recent_dates_are_left_alone(tmp_path):
    write_lake(tmp_path)
    report = compact(RawTable(str(tmp_path)), before=START - timedelta(days=1))
    assert report == {"removed": 0, "added": 0}


def test_the_cli_compacts_and_reports(tmp_path):
    write_lake(tmp_path)
    before = coordinates(tmp_path)
    done = faust("raw", "compact", "--before", LATER.isoformat(), root=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "optimized the hours that ended by 2026-03-02 09:00: " in done.stdout
    assert coordinates(tmp_path) == before
    bad = faust("raw", "compact", "--before", "yesterday-ish", root=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error:")


# -- the old layout ----------------------------------------------------------------------


def write_old(table: pa.Table, path: str) -> None:
    """One file as the old writer left it (zstd Parquet in its hour folder)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")


def legacy_lake(root: Path, flushes: int = 6) -> tuple[int, list]:
    """The Parquet layout of ADR 0003, as its writer left it: one file per flush and hour
    (``payments-<p>-<first>-<last>.parquet``); partition 0's first two flushes (schema
    version 1: no ``customer_id``) merged by a compaction that died before deleting them;
    partition 1's last flush listed in ``_inflight`` with a second file that was never
    written (the worker died between its files). Returns the rows a reader of that
    layout counted (each coordinate once, the incomplete flush left out: a replay writes
    it), and the events."""
    source = root.parent / f"{root.name}-source"
    events = write_lake(source, batches=flushes)
    rows = DeltaTable(str(source)).to_pyarrow_table()
    counted = 0
    paths: dict[tuple[int, int], str] = {}
    for partition in (0, 1):
        for b in range(flushes):
            first, last = b * 300, b * 300 + 299
            batch = rows.filter(pc.and_(pc.equal(rows["partition"], partition), pc.and_(
                pc.greater_equal(rows["offset"], first), pc.less_equal(rows["offset"], last))))
            hours = sorted(set(zip(batch["date"].to_pylist(), batch["hour"].to_pylist(),
                                   strict=True)))
            assert hours == [("2026-03-01", "09")]  # one file per flush
            part = batch.drop_columns(["date", "hour"])
            if partition == 0 and b < 2:
                part = part.drop_columns(["customer_id"])
            path = f"{root}/date=2026-03-01/hour=09/payments-{partition}-{first}-{last}.parquet"
            write_old(part, path)
            paths[(partition, b)] = path
            counted += part.num_rows
    merged = pa.concat_tables([conformed(pq.read_table(paths[(0, b)])) for b in (0, 1)])
    write_old(merged, f"{root}/date=2026-03-01/hour=09/payments-0-0-599.parquet")
    lost = {"first_offset": (flushes - 1) * 300, "last_offset": flushes * 300 - 1,
            "files": [paths[(1, flushes - 1)],
                      paths[(1, flushes - 1)].replace("hour=09", "hour=10")]}
    counted -= pq.read_table(paths[(1, flushes - 1)]).num_rows
    (root / "_inflight").mkdir()
    (root / "_inflight" / "payments-1.json").write_text(json.dumps({"flushes": [lost]}))
    return counted, events


def test_migrate_converts_the_old_layout_in_place_exactly_once(tmp_path):
    root = tmp_path / "lake"
    expected, events = legacy_lake(root)
    fs = fsspec.filesystem("file")
    steps: list[tuple[int, int]] = []
    report = migrate(fs, str(root), RawTable(str(root)),
                     lambda done, total: steps.append((done, total)))
    assert (report.rows, report.folders, report.superseded, report.incomplete) == (
        expected, 1, 2, 1)
    got = coordinates(root)
    assert sum(got.values()) == expected and max(got.values()) == 1
    assert not list(root.rglob("payments-*.parquet")) and not (root / "_inflight").exists()
    assert steps == [(1, 1)]
    lake = read_lake(root)
    old = lake.filter(pc.and_(pc.equal(lake["partition"], 0), pc.less(lake["offset"], 600)))
    assert old.num_rows and all(c is None for c in old["customer_id"].to_pylist())
    table = DeltaTable(str(root))
    assert table.transaction_version("payments-0") == 6 * 300 - 1
    # the incomplete flush is not held: the replay from the committed offset writes it
    assert table.transaction_version("payments-1") == 5 * 300 - 1
    writer = RawEventWriter(str(root))
    writer.append(batch_of(events[1::2][1200:1800], 1, 1200, START.timestamp() + 600))
    assert writer.flush("payments", 1).written == 300  # 1200..1499 are held already
    got = coordinates(root)
    assert sum(got.values()) == len(events) and max(got.values()) == 1

    again = migrate(fs, str(root), RawTable(str(root)))
    assert (again.folders, again.rows) == (0, 0) and coordinates(root) == got


def test_an_interrupted_migration_is_finished_by_the_next_run(tmp_path, monkeypatch):
    root = tmp_path / "lake"
    expected, _ = legacy_lake(root)
    fs = fsspec.filesystem("file")
    real_rm = fs.rm
    calls = {"n": 0}

    def dying_rm(path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the folder's commit is done, some old files are deleted
            raise OSError("the process died here")
        return real_rm(path, *args, **kwargs)

    monkeypatch.setattr(fs, "rm", dying_rm)
    with pytest.raises(OSError, match="died"):
        migrate(fs, str(root), RawTable(str(root)))
    monkeypatch.setattr(fs, "rm", real_rm)
    report = migrate(fs, str(root), RawTable(str(root)))
    assert (report.skipped, report.rows) == (1, 0), "the committed folder is not appended again"
    got = coordinates(root)
    assert sum(got.values()) == expected and max(got.values()) == 1
    assert not list(root.rglob("payments-*.parquet"))


def test_the_cli_migrates_with_progress(tmp_path):
    root = tmp_path / "lake"
    expected, _ = legacy_lake(root)
    done = faust("raw", "migrate", root=root)
    assert done.returncode == 0, done.stderr
    assert f"1 hour folders converted (10 files, {expected:,} rows)" in done.stdout
    assert "migrate: 1/1 hour folders" in done.stderr
    assert sum(coordinates(root).values()) == expected
