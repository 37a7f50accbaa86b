"""The PostgreSQL sink: idempotent under replays, absolute window values."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg2
import pytest

from models.events import ErrorCategory, FailedMessage, ValidationError
from pipeline.batches import SinkBatch
from pipeline.histogram import Histogram
from pipeline.windows import HistogramPartials, WindowCounts, WindowMetrics, WindowRow
from simulator.generator import PaymentGenerator, load_scenario
from storage.metric_rows import copy_text
from storage.postgres import (
    SELECT_HISTOGRAM_PARTIALS,
    STAGE_HISTOGRAM_PARTIALS,
    PostgresSink,
    StorageError,
    create_db_engine,
    with_retries,
)
from tests.helpers import batch_metrics, execute, libpq_dsn, parse, query, shipped_config


@dataclass
class Msg:
    offset: int


def batch(partition: int, first: int, n: int, rows: list[WindowRow]) -> SinkBatch:
    gen = PaymentGenerator(load_scenario(), seed=partition, start=datetime(2026, 1, 1, tzinfo=UTC))
    payments = {first + i: parse(e.value).transaction
                for i, e in enumerate(gen.events(n))}
    failed = [FailedMessage(b"\xff", ErrorCategory.NOT_UTF8,
                            (ValidationError(None, "utf8", "bad"),), "payments", partition,
                            first + n, datetime.now(UTC))]
    return SinkBatch("payments", partition, [Msg(o) for o in range(first, first + n + 1)],
                     payments, failed, rows, time.time())


def counts(n: int, offset: int) -> WindowCounts:
    return WindowCounts(n, 100 * n, {"approved": n}, offset)


START = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp())


def test_replayed_batches_converge(database_url):
    sink = PostgresSink(create_db_engine(database_url))
    b0 = batch(0, 0, 50, [WindowRow(300, START, "pos", 0, counts(30, 49))])
    b1 = batch(1, 0, 40, [WindowRow(300, START, "pos", 1, counts(12, 39))])
    sink.write([b0, b1])
    sink.write([b0])  # redelivered after a crash
    sink.write([b1, b0])
    assert query(database_url, "SELECT count(*) FROM normalized_transactions")[0][0] == 90
    assert query(database_url, "SELECT count(*) FROM failed_items")[0][0] == 2
    assert query(database_url, "SELECT tx_count, approved_count, amount_minor_sum "
                               "FROM payment_metrics_5m") == [(42, 42, 4200)]
    raw = query(database_url, "SELECT raw_payload FROM failed_items LIMIT 1")[0][0]
    assert bytes(raw) == b"\xff"


def test_window_partials_never_go_back(database_url):
    sink = PostgresSink(create_db_engine(database_url))
    sink.write([batch(0, 0, 1, [WindowRow(300, START, "pos", 0, counts(10, 500))])])
    # a late writer (e.g. the previous owner of the partition) with older state
    sink.write([batch(0, 0, 1, [WindowRow(300, START, "pos", 0, counts(4, 200))])])
    assert query(database_url, "SELECT tx_count FROM payment_metrics_5m") == [(10,)]
    sink.write([batch(0, 0, 1, [WindowRow(300, START, "pos", 0, counts(11, 501))])])
    assert query(database_url, "SELECT tx_count FROM payment_metrics_5m") == [(11,)]


def test_hourly_rows_stay_out_of_the_5_minute_table(database_url):
    sink = PostgresSink(create_db_engine(database_url))
    sink.write([batch(0, 0, 1, [WindowRow(3600, START, "pos", 0, counts(7, 3))])])
    assert query(database_url, "SELECT count(*) FROM payment_metrics_5m") == [(0,)]
    assert query(database_url, "SELECT tx_count FROM payment_window_partials "
                               "WHERE window_seconds = 3600") == [(7,)]


def test_unreachable_database_fails_after_retries_without_the_password():
    engine = create_db_engine("postgresql+psycopg2://u:s3cret@127.0.0.1:1/x")
    sink = PostgresSink(engine, give_up_after=1.2)
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"failed after [3-9] tries") as info:
        sink.write([batch(0, 0, 1, [])])
    assert "s3cret" not in str(info.value)
    assert 1.2 <= time.monotonic() - started < 5  # backed off, then gave up at the budget


def test_retries_stop_at_once_on_a_non_transient_error(database_url):
    calls = []

    def fail():
        calls.append(1)
        raise psycopg2.errors.UndefinedTable("no such table")

    with pytest.raises(psycopg2.errors.UndefinedTable):
        with_retries(fail, give_up_after=10, what="x")
    assert len(calls) == 1


def test_dynamic_metrics_once_per_payment_even_when_replayed(database_url):
    engine = shipped_config().engine
    b = batch(0, 0, 20, [])
    b.metrics = batch_metrics(engine, b.payments)
    b.config_version = "v-test"
    flagged = {tx.transaction_id for o, tx in b.payments.items()
               if any(r[0] == "compliance" for r in engine.extract(tx, o).rows())}
    sink = PostgresSink(create_db_engine(database_url))
    assert sink.write([b])["dynamic_metrics"] == 20 + len(flagged)
    assert sink.write([b])["dynamic_metrics"] == 0  # the replay inserts no transaction
    rows = query(database_url, "SELECT transaction_id, metric_type, metric_data, config_version "
                               "FROM dynamic_metrics")
    assert {r[3] for r in rows} == {"v-test"}
    assert sorted(r[0] for r in rows if r[1] == "metrics") == sorted(
        tx.transaction_id for tx in b.payments.values())
    assert {r[0] for r in rows if r[1] == "compliance"} == flagged
    tx = next(iter(b.payments.values()))
    (data,) = [r[2] for r in rows if r[0] == tx.transaction_id and r[1] == "metrics"]
    assert set(data) == {"counter", "gauge", "histogram", "rate"}
    assert data["histogram"]["amount_minor"] == tx.amount_minor
    assert data["counter"][f"transactions_{tx.status.value}"] == 1
    event_time = query(database_url, "SELECT event_time FROM normalized_transactions "
                                     f"WHERE transaction_id = '{tx.transaction_id}'")[0][0]
    assert event_time == tx.event_time  # sent as POSIX seconds, stored to the microsecond


def test_copy_text_escapes_what_copy_would_read_as_structure():
    assert copy_text('{"a\\tb": "x\\\\y"}') == '{"a\\\\tb": "x\\\\\\\\y"}'
    assert copy_text("line\nbreak\r") == "line\\nbreak\\r"
    assert copy_text("plain") == "plain"


def test_window_partials_merge_into_aggregate_histograms(database_url):
    sink = PostgresSink(create_db_engine(database_url))
    w0 = WindowMetrics(last_offset=5)
    w0.merge({"processing_ms|": _hist([5, 50, 500])})
    w1 = WindowMetrics(last_offset=9)
    w1.merge({"processing_ms|": _hist([7])})
    both = HistogramPartials()
    both.add(300, START, 0, w0)
    both.add(300, START, 1, w1)
    sink.write_windows(both)
    stale = WindowMetrics(last_offset=3)  # an older value of partition 1: ignored
    stale.merge({"processing_ms|": _hist([1000, 1000])})
    old = HistogramPartials()
    old.add(300, START, 1, stale)
    sink.write_windows(old)
    (row,) = query(database_url, "SELECT buckets, count, sum, min, max, p50 "
                                 "FROM aggregate_histograms")
    assert row[:5] == ({"10": 2, "100": 1, "+Inf": 1}, 4, 562.0, 5.0, 500.0)
    assert 5 <= row[5] <= 10


def test_only_the_staged_windows_are_merged_and_each_is_looked_up_by_its_key(database_url):
    """The windows to merge are the staged partials' (the rows of another window stay as
    they are), and each one's rows are found by the primary key whatever the statistics:
    a join over the whole table was the planner's choice for the claims (test_claims)."""
    execute(database_url, """
        INSERT INTO histogram_partials (window_seconds, window_start, metric_type, dimension,
                                        source_partition, buckets, count, sum, last_offset)
        SELECT 300, timestamptz '2026-01-01' + g * interval '5 minutes', 'm', '', p,
               '[1, 0]', 1, 1.0, 1
        FROM generate_series(1, 20000) g, generate_series(0, 3) p""")
    conn = psycopg2.connect(libpq_dsn(database_url))
    try:
        cur = conn.cursor()
        cur.execute(STAGE_HISTOGRAM_PARTIALS)
        cur.execute("INSERT INTO stage_histogram_partials SELECT 300, timestamptz "
                    "'2026-01-01' + g * interval '5 minutes', 'm', '', 0, '[2, 0]', 2, 2.0, "
                    "NULL, NULL, 2 FROM generate_series(1, 5000) g")
        plan = "\n".join(r[0] for r in (cur.execute(f"EXPLAIN {SELECT_HISTOGRAM_PARTIALS}")
                                         or cur.fetchall()))
        cur.execute(SELECT_HISTOGRAM_PARTIALS)
        rows = cur.fetchall()
    finally:
        conn.close()
    assert "Index Scan using pk_histogram_partials on histogram_partials" in plan, plan
    assert "Seq Scan on histogram_partials" not in plan
    assert "Hash Join" not in plan and "Merge Join" not in plan
    assert len(rows) == 5000 * 4  # every partition's row of the 5,000 staged windows
    assert rows == sorted(rows, key=lambda r: r[:4])
    assert {r[4] for r in rows} == {"[1, 0]"}  # as text, for orjson


def _hist(values):
    h = Histogram((10.0, 100.0))
    h.observe_many(values)
    return h


@pytest.mark.parametrize("total", [0.1 + 0.2, 2 ** 70, 1e308 * 10, -(1e308 * 10), 5e-324])
def test_window_rows_keep_every_number_as_it_was(database_url, total):
    """The window rows go by COPY, numbers as their repr: PostgreSQL reads back the same
    double (an int sum beyond 2**53, an overflowing sum of hostile values, the smallest
    subnormal), and the merged row and its quantiles are the same as the partial's."""
    sink = PostgresSink(create_db_engine(database_url))
    start = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
    metric, dim = "odd\\metric", "channel=we\tb"  # text COPY must escape
    rows = [(300, start, metric, dim, 0, "[1, 2]", 3, total, -1.5, None, 9)]
    assert sink.write_windows(HistogramPartials(rows, {metric: (1.0,)})) == {
        "histogram_partials": 1, "aggregate_histograms": 1}
    [(stored_sum, low, high, at)] = query(
        database_url, "SELECT sum, min, max, window_start FROM histogram_partials")
    assert (stored_sum, low, high, at) == (float(total), -1.5, None, start)
    [(name, where, merged, p50)] = query(
        database_url, "SELECT metric_type, dimension, sum, p50 FROM aggregate_histograms")
    h = Histogram.from_list((1.0,), [[1, 2], 3, total, -1.5, None])
    assert (name, where, merged, p50) == (metric, dim, float(total), h.quantile(0.5))
