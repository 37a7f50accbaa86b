"""Periodic jobs that run on the leader worker only (``on_leader=True`` timers) do run:
the retention job deletes an expired failed item. (They never ran while the app set
``topic_disable_leader``: without the leader topic no worker is the leader.)"""

from __future__ import annotations

import time

from tests.helpers import execute, query


def test_the_leader_runs_the_retention_job(stack):
    old, fresh = ("now() - interval '200 days'", "now()")
    for offset, created in enumerate((old, fresh)):
        execute(stack.database_url, f"""
            INSERT INTO failed_items (raw_payload, error_category, error_message,
                source_topic, source_partition, source_offset, retry_count, errors,
                first_seen_at, created_at)
            VALUES ('x', 'schema', 'bad', 'payments', 0, {offset}, 0, '[]', now(),
                    {created})""")
    stack.start_worker("w1", RETENTION_INTERVAL_S="1")
    deadline = time.monotonic() + 60
    while query(stack.database_url, "SELECT source_offset FROM failed_items") != [(1,)]:
        assert time.monotonic() < deadline, "the leader's retention job did not run"
        time.sleep(0.5)


def test_the_leader_compacts_the_lake(stack):
    """The lake's small appends (one per flush) are compacted by the leader's timer, and
    every event is still read once."""
    from datetime import UTC, datetime, timedelta

    from deltalake import DeltaTable

    from simulator.generator import PaymentGenerator, load_scenario
    from tests.helpers import read_lake

    events = list(PaymentGenerator(load_scenario(), seed=3, invalid_ratio=0.02,
                                   start=datetime.now(UTC) - timedelta(days=2)).events(3000))
    worker = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="0.2")
    for i in range(0, len(events), 500):  # several flushes per partition
        stack.send(events[i:i + 500])
        stack.wait_until_committed(i + 500)
    worker.stop()
    files = len(DeltaTable(str(stack.raw_dir)).file_uris())
    stack.start_worker("w2", LAKE_OPTIMIZE_INTERVAL_S="1")
    deadline = time.monotonic() + 60
    while not any(h.get("operation") == "OPTIMIZE"
                  for h in DeltaTable(str(stack.raw_dir)).history()):
        assert time.monotonic() < deadline, "the leader's lake compaction did not run"
        time.sleep(0.5)
    assert len(DeltaTable(str(stack.raw_dir)).file_uris()) < files
    lake = read_lake(stack.raw_dir)
    assert lake.num_rows == len(events) == len(set(zip(
        lake["partition"].to_pylist(), lake["offset"].to_pylist(), strict=True)))
