"""A round's payments as Arrow columns (storage.payment_arrays): made from the ingest
handler's columns, they are what each payment's own fields make."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import STATUSES, ParsedTransaction, TransactionStatus
from pipeline.batches import SinkBatch
from pipeline.columns import PaymentColumns
from storage.payment_arrays import FIELDS, SCHEMA, _arrays, payment_arrays, round_arrays
from tests.helpers import shipped_config

ENGINE = shipped_config().engine
BASE = datetime(2026, 11, 22, 10, tzinfo=UTC).timestamp()
TEXT = st.sampled_from(["a", "b\tc", "back\\slash", "é", "new\nline", ""])

payment = st.builds(
    lambda i, status, channel, currency, decline, amount, ms, risk, merchant, card, meta: (
        ParsedTransaction(
            transaction_id=f"tx-{i}", event_time=datetime.fromtimestamp(BASE + i, UTC),
            merchant_id=merchant, customer_id=f"c-{i % 5}", amount_minor=amount,
            currency=currency, channel=channel, payment_method="card",
            status=TransactionStatus(status), decline_code=decline, country="DE",
            processing_ms=ms, card_bin=card, risk_score=risk, metadata=meta)),
    st.integers(0, 10**6), st.sampled_from(STATUSES), st.sampled_from(["pos", "web", "é"]),
    st.sampled_from(["EUR", "USD", "JPY"]), st.one_of(st.none(), TEXT),
    st.integers(0, 10**12), st.integers(0, 600_000),
    st.one_of(st.none(), st.floats(0.0, 1.0), st.sampled_from([0.0, -0.0, 1.0])),
    TEXT, st.one_of(st.none(), st.sampled_from(["411111", "55"])),
    st.one_of(st.none(), st.dictionaries(TEXT, TEXT, max_size=2)))


def batch(payments: list[ParsedTransaction], first: int, with_metrics: bool) -> SinkBatch:
    by_offset = dict(enumerate(payments, start=first))
    metrics = ENGINE.extract_batch(PaymentColumns(by_offset, by_offset.values())) \
        if with_metrics else None
    return SinkBatch("payments", 0, [], by_offset, [], [], 0.0, metrics, "v")


def each(payments: list[ParsedTransaction]) -> list[pa.Array]:
    """The reference: each field read from each payment."""
    return [pa.array([get(p) for p in payments], kind) for _, get, kind in FIELDS]


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types (1 is not 1.0, -0.0 is not 0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return type(a) is type(b) and a == b


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(payment, min_size=1, max_size=30), min_size=1, max_size=4))
def test_the_columns_make_the_arrays_each_payment_makes(rounds):
    batches, first = [], 0
    for payments in rounds:
        batches.append(batch(payments, first, with_metrics=True))
        first += len(payments)
    payments = [p for b in batches for p in b.payments.values()]
    columns = [b.metrics.cols for b in batches]
    got, want = _arrays(payments, columns), each(payments)
    for (name, _, _), a, b in zip(FIELDS, got, want, strict=True):
        assert a.type == b.type and a.equals(b), name
        assert all(map(same, a.to_pylist(), b.to_pylist())), name
    # and each batch keeps its own slice of them, and a round is them one after another,
    # made now or before
    whole = pa.RecordBatch.from_arrays(want, schema=SCHEMA)
    assert round_arrays(batches).equals(whole)
    made = payment_arrays(batches)
    for b, arrays in zip(batches, made, strict=True):
        assert arrays.equals(pa.RecordBatch.from_arrays(each(list(b.payments.values())),
                                                        schema=SCHEMA))
    assert round_arrays(batches).equals(whole)
    batches[-1].arrow = None
    assert round_arrays(batches).equals(whole)


def test_a_batch_without_columns_has_each_payment_read():
    """A round with a batch that has no metrics (tests, tools) reads each payment; a
    batch whose columns are not its payments' is not trusted either."""
    a = batch([ParsedTransaction("t1", datetime.fromtimestamp(BASE, UTC), "m", "c", 5, "EUR",
                                 "pos", "card", TransactionStatus.APPROVED, None, "DE", 1)],
              0, with_metrics=True)
    b = batch([ParsedTransaction("t2", datetime.fromtimestamp(BASE, UTC), "m", "c", 7, "EUR",
                                 "web", "card", TransactionStatus.DECLINED, "05", "DE", 2)],
              1, with_metrics=False)
    c = batch([ParsedTransaction("t3", datetime.fromtimestamp(BASE, UTC), "m", "c", 9, "USD",
                                 "web", "card", TransactionStatus.FAILED, None, "DE", 3),
               ParsedTransaction("t4", datetime.fromtimestamp(BASE, UTC), "m", "c", 11, "USD",
                                 "web", "card", TransactionStatus.FAILED, None, "DE", 4)],
              2, with_metrics=True)
    c.payments = {2: c.payments[2], 3: b.payments[1]}  # the second's metrics are another's
    made = payment_arrays([a, b, c])
    assert [m.column("transaction_id").to_pylist() for m in made] == [["t1"], ["t2"],
                                                                        ["t3", "t2"]]
    assert made[2].column("amount_minor").to_pylist() == [9, 7]
    d = batch(list(a.payments.values()) + list(c.payments.values()), 5, with_metrics=True)
    c.arrow = None
    assert payment_arrays([c])[0].column("amount_minor").to_pylist() == [9, 7]
    assert payment_arrays([d])[0].column("amount_minor").to_pylist() == [5, 9, 7]
