"""The data access layer against real PostgreSQL: lookups, keyset pages, aggregates,
its errors, and the pool (exhaustion is a clear error, a killed connection is replaced)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from pipeline.batches import SinkBatch
from simulator.generator import PaymentGenerator, load_scenario
from storage.postgres import PostgresSink, StorageError, create_db_engine
from storage.queries import PaymentQueries, QueryError, TxFilter
from tests.helpers import batch_metrics, execute, parse, query, shipped_config

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


class Msg:
    def __init__(self, offset: int) -> None:
        self.offset = offset


@pytest.fixture
def loaded(database_url):
    """1,500 payments written by the sink, with their metrics."""
    engine = shipped_config().engine
    gen = PaymentGenerator(load_scenario(), seed=3, start=START)
    payments = {i: parse(e.value).transaction for i, e in enumerate(gen.events(1500))}
    metrics = batch_metrics(engine, payments)
    PostgresSink(create_db_engine(database_url)).write([SinkBatch(
        "payments", 0, [Msg(o) for o in payments], payments, [], [], time.time(), metrics,
        "test-version")])
    return PaymentQueries(create_db_engine(database_url)), list(payments.values())


def test_lookup_by_id_and_its_metrics(loaded):
    q, payments = loaded
    tx = payments[7]
    row = q.transaction(tx.transaction_id)
    assert row["amount_minor"] == tx.amount_minor and row["source_offset"] == 7
    assert q.transaction("no-such-id") is None
    rows = q.metrics_of(tx.transaction_id)
    assert rows[0]["metric_type"] == "metrics" and rows[0]["config_version"] == "test-version"
    assert rows[0]["metric_data"]["histogram"]["amount_minor"] == tx.amount_minor
    # a parameter, never SQL: quotes in the input are data
    assert q.transaction("x' OR '1'='1") is None


def test_keyset_pages_cover_a_filtered_range_once_in_order(loaded):
    q, payments = loaded
    times = sorted(tx.event_time for tx in payments)
    start, end = times[100], times[1200]
    want = sorted((tx.event_time, tx.transaction_id) for tx in payments
                  if start <= tx.event_time < end and tx.channel == "ecommerce")
    got, cursor, pages = [], None, 0
    while True:
        page = q.transactions(TxFilter(start, end, channel="ecommerce"), limit=37,
                              cursor=cursor)
        got += [(r["event_time"], r["transaction_id"]) for r in page.rows]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(want) > 100 and got == want and pages == -(-len(want) // 37)
    merchant = payments[0].merchant_id
    rows = q.transactions(TxFilter(START, START + timedelta(days=1), merchant_id=merchant,
                                   status="approved"), limit=1000).rows
    assert {(r["merchant_id"], r["status"]) for r in rows} <= {(merchant, "approved")}
    assert len(rows) == sum(tx.merchant_id == merchant and tx.status.value == "approved"
                            for tx in payments)


def test_metric_rows_page_by_creation_time(loaded):
    q, payments = loaded
    now = datetime.now(UTC)
    seen, cursor = [], None
    while True:
        page = q.metric_rows(now - timedelta(hours=1), now + timedelta(hours=1), "metrics",
                             limit=400, cursor=cursor)
        seen += [r["transaction_id"] for r in page.rows]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert sorted(seen) == sorted(tx.transaction_id for tx in payments)


def test_summary_and_compliance_flags_equal_a_count_of_the_payments(loaded):
    q, payments = loaded
    flt = TxFilter(START - timedelta(days=1), START + timedelta(days=2))
    rows = {r["key"]: r for r in q.summary(flt, "channel")}
    by_channel = Counter(tx.channel for tx in payments)
    assert {k: r["payments"] for k, r in rows.items()} == dict(by_channel)
    for channel, r in rows.items():
        mine = [tx for tx in payments if tx.channel == channel]
        assert r["amount_minor_sum"] == sum(tx.amount_minor for tx in mine)
        assert r["approved"] == sum(tx.status.value == "approved" for tx in mine)
        decided = sum(tx.status.value in ("approved", "declined") for tx in mine)
        assert r["authorization_rate"] == pytest.approx(r["approved"] / decided)
        assert r["approval_rate"] == pytest.approx(r["approved"] / r["payments"])
    flags = q.compliance_flags(flt)
    engine = shipped_config().engine
    want: Counter[str] = Counter()
    for i, tx in enumerate(payments):
        for kind, data in engine.extract(tx, i).rows():
            if kind == "compliance":
                want.update(name for name, v in data.items() if v == 1)
    assert flags == dict(want) and flags


def test_bad_requests_are_clear_errors(loaded):
    q, _ = loaded
    with pytest.raises(QueryError, match="the range is empty"):
        q.transactions(TxFilter(START, START))
    with pytest.raises(QueryError, match="page size must be 1-1000"):
        q.transactions(TxFilter(START, START + timedelta(hours=1)), limit=5000)
    with pytest.raises(QueryError, match="not a cursor this API returned"):
        q.transactions(TxFilter(START, START + timedelta(hours=1)), cursor="garbage")
    with pytest.raises(QueryError, match="cannot group by 'amount_minor'"):
        q.summary(TxFilter(START, START + timedelta(hours=1)), "amount_minor")


def test_pool_exhaustion_is_a_clear_error_not_a_hang(database_url):
    engine = create_db_engine(database_url, pool_min=1, pool_max=2, pool_timeout_s=1)
    held = [engine.raw_connection(), engine.raw_connection()]
    try:
        started = time.monotonic()
        with pytest.raises(StorageError, match=r"all 2 database connections are in use"):
            PaymentQueries(engine).transaction("x")
        assert time.monotonic() - started < 5
    finally:
        for conn in held:
            conn.close()
    assert PaymentQueries(engine).transaction("x") is None  # free again: it works


def test_a_killed_connection_is_replaced(database_url):
    engine = create_db_engine(database_url, pool_min=1, pool_max=1)
    q = PaymentQueries(engine)
    q.transaction("x")  # the pool now holds one open connection
    (pid,) = [r[0] for r in query(database_url, "SELECT pid FROM pg_stat_activity WHERE "
                                  "datname = current_database() AND application_name = "
                                  "'payment-monitor' AND state = 'idle'")]
    execute(database_url, f"SELECT pg_terminate_backend({int(pid)})")
    assert q.transaction("x") is None  # pre-ping found it dead and opened a new one
    pids = query(database_url, "SELECT pid FROM pg_stat_activity WHERE datname = "
                               "current_database() AND application_name = 'payment-monitor'")
    assert pids and pid not in [r[0] for r in pids]


def test_concurrent_readers_share_the_pool(loaded):
    q, payments = loaded
    errors: list[Exception] = []

    def read() -> None:
        try:
            for tx in payments[:50]:
                assert q.transaction(tx.transaction_id) is not None
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
