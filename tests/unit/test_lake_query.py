"""Queries over the raw-event lake: time ranges, filters, pruning, streaming, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from simulator.generator import PaymentGenerator, load_scenario
from storage.lake import LakeQuery, LakeQueryError, RawEventLake
from storage.parquet import RawEventWriter
from tests.helpers import batch_of

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
ARRIVAL = datetime(2026, 3, 2, 12, 30, tzinfo=UTC).timestamp()  # failed rows: arrival time


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """3 hours of event time (1 event/s, 10 % invalid) in two partitions."""
    root = tmp_path_factory.mktemp("lake")
    scenario = load_scenario()
    scenario["events_per_second"] = 1
    scenario["late_event_ratio"] = 0.0
    events = list(PaymentGenerator(scenario, seed=5, invalid_ratio=0.1, start=START)
                  .events(3 * 3600))
    writer = RawEventWriter(str(root), flush_rows=100_000, flush_seconds=600)
    accepted = []
    for partition in (0, 1):
        batch = batch_of(events[partition::2], partition, 0, ARRIVAL)
        accepted += batch.payments.values()
        writer.append(batch)
        writer.flush("payments", partition)
    return root, accepted, len(events) - len(accepted)


def test_a_time_range_returns_exactly_the_events_in_it(lake):
    root, accepted, _ = lake
    q = LakeQuery(START + timedelta(minutes=30), START + timedelta(minutes=90), accepted_only=True)
    got = [r for b in RawEventLake(str(root)).scan(q, columns=["transaction_id", "event_time"])
           for r in b.to_pylist()]
    want = {tx.transaction_id for tx in accepted if q.start <= tx.event_time < q.end}
    assert {r["transaction_id"] for r in got} == want and len(got) == len(want)
    assert all(q.start <= r["event_time"] < q.end for r in got)


def test_filters_on_merchant_status_and_channel(lake):
    root, accepted, _ = lake
    tx = accepted[100]
    lake_ = RawEventLake(str(root))
    rows = [r for b in lake_.get_events_by_date(date(2026, 3, 1), merchant_id=tx.merchant_id,
                                               status=tx.status.value, channel=tx.channel)
            for r in b.to_pylist()]
    want = {t.transaction_id for t in accepted if (t.merchant_id, t.status, t.channel) ==
            (tx.merchant_id, tx.status, tx.channel)}
    assert {r["transaction_id"] for r in rows} == want


def test_failed_messages_are_found_by_arrival_time(lake):
    root, _, n_failed = lake
    lake_ = RawEventLake(str(root))
    day2 = list(lake_.get_events_by_date(date(2026, 3, 2)))
    assert sum(b.num_rows for b in day2) == n_failed
    assert not any(v for b in day2 for v in b.column("accepted").to_pylist())


def test_only_the_hours_of_the_range_are_opened(lake):
    root, _, _ = lake
    q = LakeQuery(START + timedelta(minutes=70), START + timedelta(minutes=80))
    files = RawEventLake(str(root)).files(q)
    assert len(files) == 2 and all("date=2026-03-01/hour=10/" in f for f in files)


def test_results_stream_in_batches(lake):
    root, accepted, _ = lake
    q = LakeQuery(START, START + timedelta(hours=3), accepted_only=True)
    batches = list(RawEventLake(str(root)).scan(q, batch_rows=1000))
    assert len(batches) > 5 and max(b.num_rows for b in batches) <= 1000
    assert sum(b.num_rows for b in batches) == len(accepted)


def test_bad_queries_are_refused_clearly(lake):
    root, _, _ = lake
    with pytest.raises(LakeQueryError, match="empty range"):
        LakeQuery(START, START)
    with pytest.raises(LakeQueryError, match="time zone"):
        LakeQuery(datetime(2026, 3, 1), datetime(2026, 3, 2))
    with pytest.raises(LakeQueryError, match="unknown column 'colour'"):
        list(RawEventLake(str(root)).scan(LakeQuery(START, START + timedelta(hours=1)),
                                          columns=["colour"]))
    assert RawEventLake(str(root / "nothing")).count(
        LakeQuery(START, START + timedelta(hours=1))) == 0


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    faust = str(Path(sys.executable).with_name("faust"))
    env = {**os.environ, "RAW_EVENTS_URL": str(root), "BROKER_URL": "kafka://127.0.0.1:1",
           "STORE_URL": "memory://", "APP_DATADIR": str(root / "_faust")}
    return subprocess.run([faust, "-A", "app", "raw", "query", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_cli_writes_jsonl_csv_and_parquet(lake, tmp_path):
    root, accepted, _ = lake
    args = ("--from", "2026-03-01T09:10:00Z", "--to", "2026-03-01T09:20:00Z", "--accepted-only")
    want = {t.transaction_id for t in accepted
            if datetime(2026, 3, 1, 9, 10, tzinfo=UTC) <= t.event_time
            < datetime(2026, 3, 1, 9, 20, tzinfo=UTC)}
    out = cli(root, *args)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert {r["transaction_id"] for r in rows} == want
    assert json.loads(rows[0]["value"])["transaction_id"] == rows[0]["transaction_id"]
    assert f"{len(want):,} events" in out.stderr

    csv_file = tmp_path / "events.csv"
    assert cli(root, *args, "--format", "csv", "--output", str(csv_file)).returncode == 0
    assert len(csv_file.read_text().splitlines()) == len(want) + 1  # a header line

    pq_file = tmp_path / "events.parquet"
    assert cli(root, *args, "--format", "parquet", "--output", str(pq_file)).returncode == 0
    assert set(pq.read_table(pq_file).column("transaction_id").to_pylist()) == want


def test_cli_errors_are_one_line(lake):
    root, _, _ = lake
    out = cli(root, "--from", "yesterday-ish")
    assert out.returncode == 2 and out.stderr.strip().startswith("error: not a time")
    assert "Traceback" not in out.stderr
    out = cli(root, "--from", "2026-03-01", "--format", "parquet")
    assert out.returncode == 2 and "needs --output" in out.stderr
    out = cli(root, "--status", "settled")
    assert out.returncode == 2 and "'settled' is not one of 'approved'" in out.stderr
    out = cli(root, "--channel", "atm")
    assert out.returncode == 2 and "'atm' is not one of 'ecommerce'" in out.stderr
