"""The payments' COPY input made a column at a time (storage.postgres._transaction_copy,
Arrow's CSV writer) stages in PostgreSQL exactly what the row-at-a-time text rows
(_transaction_row) stage, whatever the values hold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.services import libpq_dsn
from models.events import ParsedTransaction, TransactionStatus
from pipeline.batches import SinkBatch
from storage.postgres import (
    COPY_TRANSACTIONS,
    COPY_TRANSACTIONS_CSV,
    STAGE_TRANSACTIONS,
    CopyRows,
    _transaction_copy,
    _transaction_row,
    copy_text,
)

PLAIN = st.text("abcXYZ019-_ .:/é€", min_size=1, max_size=10)
ANY = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
              max_size=10)
TEXT = st.one_of(PLAIN, ANY, st.sampled_from(["a\\b", "a\tb", "a\nb", 'a"b', "a\rb", "\\N",
                                              "N", "", '"', "\\", "a,b"]))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@st.composite
def payment(draw) -> ParsedTransaction:
    return ParsedTransaction(
        transaction_id=draw(TEXT), merchant_id=draw(TEXT), customer_id=draw(TEXT),
        event_time=EPOCH + timedelta(microseconds=draw(st.integers(0, 2**52))),
        amount_minor=draw(st.integers(-(2**63), 2**63 - 1)), currency=draw(TEXT),
        channel=draw(TEXT), payment_method=draw(TEXT),
        status=draw(st.sampled_from(list(TransactionStatus))),
        decline_code=draw(st.none() | TEXT), country=draw(TEXT),
        processing_ms=draw(st.integers(-(2**31), 2**31 - 1)), card_bin=draw(st.none() | TEXT),
        risk_score=draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)),
        metadata=draw(st.none() | st.dictionaries(TEXT, TEXT, max_size=3)))


@st.composite
def batches(draw) -> list[SinkBatch]:
    out, offset = [], draw(st.integers(0, 2**40))
    for _ in range(draw(st.integers(1, 4))):
        payments = {}
        for _ in range(draw(st.integers(0, 6))):
            offset += draw(st.integers(1, 3))
            payments[offset] = draw(payment())
        out.append(SinkBatch(draw(st.sampled_from(["payments", "pay\\ments", "p,\"q"])),
                             draw(st.integers(0, 2**31 - 1)), [], payments, [], [], 0.0,
                             None, "v1"))
    return out


def staged(cur, statement: str, source) -> list[tuple]:
    cur.execute(STAGE_TRANSACTIONS)
    cur.execute("TRUNCATE stage_transactions")
    cur.copy_expert(statement, source)
    cur.execute("SELECT * FROM stage_transactions ORDER BY source_offset")
    return cur.fetchall()


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(work=batches())
def test_postgres_stages_from_the_columns_what_it_stages_from_the_rows(database_url, work):
    rows = CopyRows(_transaction_row(p, copy_text(b.topic), b.partition, o)
                    for b in work for o, p in b.payments.items())
    statement, columns = _transaction_copy(work)
    assert statement == COPY_TRANSACTIONS_CSV
    conn = psycopg2.connect(libpq_dsn(database_url))
    try:
        cur = conn.cursor()
        want = staged(cur, COPY_TRANSACTIONS, rows)
        assert staged(cur, statement, columns) == want
        assert len(want) == sum(len(b.payments) for b in work)
    finally:
        conn.close()


def test_a_value_beyond_its_column_goes_a_row_at_a_time(database_url):
    """An integer beyond 64 bits does not fit Arrow's column; the text rows carry it to
    PostgreSQL, which refuses it as it always did."""
    p = ParsedTransaction(transaction_id="t1", event_time=EPOCH, merchant_id="m",
                          customer_id="c", amount_minor=2**64, currency="EUR", channel="pos",
                          payment_method="card", status=TransactionStatus.APPROVED,
                          decline_code=None, country="DE", processing_ms=1)
    statement, source = _transaction_copy([SinkBatch("payments", 0, [], {7: p}, [], [], 0.0,
                                                     None, "v1")])
    assert statement == COPY_TRANSACTIONS
    assert source.read() == _transaction_row(p, "payments", 0, 7)
