"""``reprocess`` after a rule change gives the windows and flags of a fresh run under the
new rules, and brings late payments into the windows.

One broker, one topic, two real workers reading it: ``a`` under the shipped rules into one
database, ``b`` (another consumer group) under the changed rules into another: the fresh
run. After ``reprocess`` of ``a``'s database under the changed rules, the two databases
hold the same flags and the same windows, row for row. Then payments later than the grace
period arrive; ``a``'s worker leaves them out of its windows, and a second ``reprocess``
brings them in: the windows then equal a count of every accepted payment.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import orjson
import yaml

from devtools.stack import Stack
from models.events import STATUSES
from pipeline.config import COMPLIANCE_KEY
from simulator.generator import PaymentGenerator, SimEvent, load_scenario
from storage.postgres import create_db_engine
from storage.reprocess import reprocess
from storage.window_rebuild import WindowPlan
from tests.helpers import changed_compliance_rules, expected_windows, query, read_topic, split_late

START = datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
SINCE, UNTIL = START, START + timedelta(hours=2)
NEW = changed_compliance_rules()
PLAN = WindowPlan((300, 3600), 7200)  # the workers' WINDOW_SIZES and WINDOW_RETENTION_S

IN_RANGE = "window_start >= %s AND window_start < %s"
WINDOWS = {
    "payment_window_partials": "SELECT window_seconds, window_start, channel, "
    "source_partition, tx_count, " + ", ".join(f"{s}_count" for s in STATUSES) +
    ", amount_minor_sum, last_offset FROM payment_window_partials WHERE " + IN_RANGE,
    "payment_metrics_5m": "SELECT window_start, channel, tx_count, " +
    ", ".join(f"{s}_count" for s in STATUSES) + ", amount_minor_sum FROM payment_metrics_5m "
    "WHERE " + IN_RANGE,
    "histogram_partials": "SELECT window_seconds, window_start, metric_type, dimension, "
    "source_partition, buckets, count, round(sum::numeric, 6), min, max, last_offset "
    "FROM histogram_partials WHERE " + IN_RANGE,
    "aggregate_histograms": "SELECT window_seconds, time_window, metric_type, dimension, "
    "buckets, count, round(sum::numeric, 6), min, max, p50, p95, p99 "
    "FROM aggregate_histograms WHERE time_window >= %s AND time_window < %s",
}
RANGE_FLAGS = ("SELECT f.transaction_id, f.rule FROM compliance_flags f WHERE "
               "f.event_time >= %s AND f.event_time < %s")


def traffic() -> list[SimEvent]:
    """Two hours of payments from 08:00 (one a second, nothing late, with the scenario's
    bad messages, re-sent ids, velocity bursts and structuring runs), then one payment per
    merchant at 14:00: every partition's stream time passes the range's windows by more
    than they need to settle."""
    scenario = {**load_scenario(), "events_per_second": 1, "late_event_ratio": 0.0}
    events = list(PaymentGenerator(scenario, seed=21, invalid_ratio=0.02, start=START)
                  .events(7_000))
    events = [e for e in events if e.kind != "valid" or e.payload["event_time"] <
              UNTIL.strftime("%Y-%m-%dT%H:%M:%S")]
    last = {e.key: e.payload for e in events if e.kind == "valid"}
    return events + [_payment(payload, f"tail-{i}", START + timedelta(hours=6))
                     for i, payload in enumerate(last.values())]


def _payment(template: dict, tx_id: str, when: datetime) -> SimEvent:
    payload = {**template, "transaction_id": tx_id,
               "event_time": when.strftime("%Y-%m-%dT%H:%M:%S.000Z")}
    return SimEvent(payload["merchant_id"].encode(), orjson.dumps(payload), "valid", payload)


def rows(url: str) -> dict[str, Counter]:
    """The range's rows of each window table (JSON values as text, to be hashable)."""
    return {table: Counter(tuple(_hashable(v) for v in row)
                           for row in query(url, sql, (SINCE, UNTIL)))
            for table, sql in WINDOWS.items()}


def _hashable(value: object) -> object:
    if isinstance(value, list | dict):
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return value


def test_reprocess_gives_a_fresh_runs_windows_and_brings_late_payments_in(
        stack, fresh_database_url, tmp_path):
    events = traffic()
    stack.send(events)
    records_valid = [e for e in events if e.kind == "valid"]
    changed = tmp_path / "compliance-new.yaml"
    changed.write_text(yaml.safe_dump(NEW.versions[COMPLIANCE_KEY].document))
    fresh = Stack(tmp_path / "fresh", stack.broker, stack.pg, fresh_database_url,
                  stack.partitions,
                  app_id=f"pm-fresh-{uuid.uuid4().hex[:6]}")
    stack.start_worker("a")
    fresh.start_worker("b", RAW_EVENTS_URL=str(tmp_path / "fresh-raw"),
                       COMPLIANCE_CONFIG=str(changed))
    try:
        stack.wait_until_committed(len(events), timeout=600)
        fresh.wait_until_committed(len(events), timeout=600)
    finally:
        for worker in fresh.workers:
            worker.stop()

    url = stack.database_url
    records = asyncio.run(read_topic(stack.broker.bootstrap, "payments"))
    counted, late = split_late(records, records_valid)
    assert not late, "the traffic has no late payment: a fresh run counts every one"
    before = rows(url)
    assert before["histogram_partials"] != rows(fresh_database_url)["histogram_partials"], \
        "the rules' rates in the windows differ before reprocess"
    assert query(url, RANGE_FLAGS, (SINCE, UNTIL)) != query(fresh_database_url, RANGE_FLAGS,
                                                             (SINCE, UNTIL))

    engine = create_db_engine(url)
    dry = reprocess(engine, NEW, SINCE, UNTIL, windows=PLAN, dry_run=True)
    assert rows(url) == before, "a dry run changes nothing"
    report = reprocess(engine, NEW, SINCE, UNTIL, windows=PLAN)
    assert report.windows is not None and dry.windows is not None
    assert report.windows.rebuilt == dry.windows.rebuilt == {300: 24, 3600: 2}
    assert report.windows.unsettled == [] and report.windows.brought_in == 0
    after = rows(url)
    for table, got in after.items():
        assert got == rows(fresh_database_url)[table], f"{table} differs from the fresh run's"
    assert Counter(query(url, RANGE_FLAGS, (SINCE, UNTIL))) == Counter(
        query(fresh_database_url, RANGE_FLAGS, (SINCE, UNTIL)))
    again = reprocess(engine, NEW, SINCE, UNTIL, windows=PLAN)
    assert rows(url) == after and again.windows.brought_in == 0, "idempotent"

    # payments later than the grace period: stored, left out of the live windows
    rng = random.Random(5)
    templates = [e.payload for e in records_valid[:300]]
    late_events = [_payment(rng.choice(templates), f"late-{i}",
                            START + timedelta(seconds=rng.uniform(0, 7199)))
                   for i in range(40)]
    stack.send(late_events)
    stack.wait_until_committed(len(events) + len(late_events), timeout=300)
    assert rows(url)["payment_metrics_5m"] == after["payment_metrics_5m"]
    late_ids = [e.payload["transaction_id"] for e in late_events]
    stored = query(url, "SELECT count(*) FROM normalized_transactions "
                        "WHERE transaction_id = ANY(%s)", (late_ids,))
    assert stored == [(len(late_events),)]

    brought = reprocess(engine, NEW, SINCE, UNTIL, windows=PLAN)
    assert brought.windows is not None and brought.windows.brought_in == len(late_events)
    every = [e for e in counted if _ts(e) < UNTIL.timestamp()] + late_events
    for size, sql in ((300, WINDOWS["payment_metrics_5m"]), (3600, HOURLY)):
        got = {(r[0], r[1]): tuple(int(x) for x in r[2:])
               for r in query(url, sql, (SINCE, UNTIL))}
        want = {k: (c["tx_count"], *(c[s] for s in STATUSES), c["amount_minor_sum"])
                for k, c in expected_windows(every, size).items()}
        assert got == want, f"{size} s windows do not count every accepted payment"
    late_rows = query(url, "SELECT count(*) FROM histogram_partials WHERE "
                           "metric_type = 'late_events' AND " + IN_RANGE, (SINCE, UNTIL))
    assert late_rows[0][0] > 0, "the late payments still count in late_events"


HOURLY = ("SELECT window_start, channel, sum(tx_count), " +
          ", ".join(f"sum({s}_count)" for s in STATUSES) + ", sum(amount_minor_sum) "
          "FROM payment_window_partials WHERE window_seconds = 3600 AND " + IN_RANGE +
          " GROUP BY window_start, channel")


def _ts(e: SimEvent) -> float:
    return datetime.strptime(e.payload["event_time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=UTC).timestamp()
