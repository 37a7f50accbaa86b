"""End-to-end helpers: a stack per test, and the end-state checks every run must pass."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Iterator

import pyarrow.dataset as ds
import pytest
from aiokafka import AIOKafkaConsumer

from devtools.stack import Stack
from simulator.generator import SimEvent
from tests.helpers import expected_histograms, expected_windows, query, too_late

STATUSES = ("approved", "declined", "failed", "pending", "reversed")


@pytest.fixture
def stack(pg, tmp_path) -> Iterator[Stack]:
    s = Stack.start(tmp_path, pg, f"pm_e2e_{uuid.uuid4().hex[:8]}")
    yield s
    s.stop(drop_database=True)


async def read_topic(bootstrap: str, topic: str) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records: list = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=3000)
            if not batch:
                return records
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()


def split_late(records: list, valid: list[SimEvent]) -> tuple[list[SimEvent], list[SimEvent]]:
    """The valid events counted in the windows and those too late, judged per partition
    in offset order from the records the broker holds."""
    by_value = {e.value: e for e in valid}
    counted: list[SimEvent] = []
    late: list[SimEvent] = []
    for partition in sorted({r.partition for r in records}):
        seq, seen = [], set()
        for r in sorted((r for r in records if r.partition == partition),
                        key=lambda r: r.offset):
            if r.value in by_value and r.value not in seen:  # later copies are duplicates
                seen.add(r.value)
                seq.append(by_value[r.value])
        gone = too_late(seq)
        counted += [e for i, e in enumerate(seq) if i not in gone]
        late += [e for i, e in enumerate(seq) if i in gone]
    return counted, late


def assert_histograms(url: str, counted: list[SimEvent], late: list[SimEvent]) -> None:
    """aggregate_histograms equal an independent computation, and each hourly window is
    the merge of its 5-minute windows."""
    rows = query(url, "SELECT metric_type, dimension, time_window, window_seconds, buckets, "
                      "count, sum, min, max FROM aggregate_histograms")
    got = {(r[0], r[1], r[2], r[3]): (r[4], r[5], r[6], r[7], r[8]) for r in rows}
    checked = 0
    for size in (300, 3600):
        for key, want in expected_histograms(counted, late, size).items():
            assert got.get(key) == want, f"{key}: {got.get(key)} != {want}"
            checked += 1
    assert checked > 50
    hourly: dict = {}
    for (metric, dim, start, size), (buckets, count, total, lo, hi) in got.items():
        if size != 300:
            continue
        hour = start.replace(minute=0)
        h = hourly.setdefault((metric, dim, hour, 3600), [Counter(), 0, 0.0, [], []])
        h[0].update(buckets)
        h[1] += count
        h[2] += total
        h[3].append(lo)
        h[4].append(hi)
    for key, (buckets, count, total, lows, highs) in hourly.items():
        row = got[key]
        assert {k: v for k, v in row[0].items() if v} == dict(+buckets), key
        assert (row[1], row[3], row[4]) == (count, min(lows), max(highs)), key
        assert abs(row[2] - total) <= 1e-6 * max(1.0, abs(total)), key


def assert_end_state(stack: Stack, events: list[SimEvent]) -> None:
    """Every produced event stored exactly once, and the windows equal an independent count."""
    url = stack.database_url
    valid = [e for e in events if e.kind == "valid"]
    invalid = [e for e in events if e.kind != "valid"]

    tx_ids = [r[0] for r in query(url, "SELECT transaction_id FROM normalized_transactions")]
    assert sorted(tx_ids) == sorted(e.payload["transaction_id"] for e in valid)
    failed = query(url, "SELECT raw_payload, source_partition, source_offset FROM failed_items")
    assert Counter(bytes(r[0]) for r in failed) == Counter(e.value for e in invalid)
    assert len(failed) + len(tx_ids) == len(events)

    lake = ds.dataset(stack.raw_dir, format="parquet", partitioning="hive").to_table(
        columns=["partition", "offset", "value", "accepted"])
    assert lake.num_rows == len(events)
    coords = set(zip(lake["partition"].to_pylist(), lake["offset"].to_pylist(), strict=True))
    assert len(coords) == len(events)
    assert Counter(lake["value"].to_pylist()) == Counter(e.value for e in events)
    assert lake["accepted"].to_pylist().count(True) == len(valid)

    records = asyncio.run(read_topic(stack.broker.bootstrap, "payments"))
    counted, late = split_late(records, valid)
    for size, sql in (
        (300, "SELECT window_start, channel, tx_count, approved_count, declined_count, "
              "failed_count, pending_count, reversed_count, amount_minor_sum "
              "FROM payment_metrics_5m"),
        (3600, "SELECT window_start, channel, sum(tx_count), sum(approved_count), "
               "sum(declined_count), sum(failed_count), sum(pending_count), "
               "sum(reversed_count), sum(amount_minor_sum) FROM payment_window_partials "
               "WHERE window_seconds = 3600 GROUP BY window_start, channel"),
    ):
        got = {(r[0], r[1]): tuple(int(x) for x in r[2:]) for r in query(url, sql)}
        want = {k: (c["tx_count"], *(c[s] for s in STATUSES), c["amount_minor_sum"])
                for k, c in expected_windows(counted, size).items()}
        assert got == want, f"{size}s windows differ"
    assert_histograms(url, counted, late)

    n_metrics = query(url, "SELECT count(DISTINCT transaction_id), count(*) FROM dynamic_metrics "
                           "WHERE metric_type = 'metrics'")
    assert n_metrics == [(len(valid), len(valid))], "every accepted payment's metrics, once"

    dlq = asyncio.run(read_topic(stack.broker.bootstrap, "payments-dlq"))
    dlq_coords = Counter(r.key for r in dlq)
    want_keys = {f"payments-{p}-{o}".encode() for _, p, o in failed}
    # at-least-once: a replay may resend a DLQ record, always under the same key
    assert set(dlq_coords) == want_keys
