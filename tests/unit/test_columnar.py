"""The columnar hot path against the per-event reference, on hypothesis-made batches.

The reference is the code the columnar path replaced on the hot path and that still
serves tests and diagnostics: :meth:`MetricEngine.extract` per payment,
:func:`split_late`, :func:`group_by_window` with :func:`apply_entries`, :func:`observe`
and :func:`merge_unseen`, and :meth:`ExtractionResult.rows` encoded as the sink used
to. Every comparison is exact: values and their Python types, key order, bytes.
"""

from __future__ import annotations

import math
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import msgspec
import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import STATUSES, ParsedTransaction, TransactionStatus
from pipeline.columns import PaymentColumns
from pipeline.metrics import BatchMetrics, MetricDef, MetricEngine, MetricExtractor, MetricType
from pipeline.windows import (
    LATE,
    StreamClock,
    WindowCounts,
    WindowedBatch,
    apply_columns,
    apply_entries,
    count_groups,
    failed_event,
    group_by_window,
    late_mask,
    observe,
    split_late,
    window_start,
)
from storage.metric_rows import metric_rows, select
from tests.helpers import shipped_config

BASE = datetime(2026, 11, 22, 10, tzinfo=UTC).timestamp()
FINEST, GRACE = 300, 120


class OddExtractor(MetricExtractor):
    """No kernel, ints and floats mixed, and it raises on some payments: the engine's
    per-payment fallback, inside a batch of kernels."""

    kind = "test_odd"

    def definitions(self) -> list[MetricDef]:
        return [MetricDef("odd", MetricType.HISTOGRAM, (1.0, 10.0)),
                MetricDef("odd_rate", MetricType.RATE)]

    def extract(self, tx, offset, history):
        if tx.processing_ms % 7 == 3:
            raise ValueError(f"no odd value for {tx.processing_ms}")
        value: Any = tx.processing_ms // 100 if tx.processing_ms % 2 else tx.processing_ms / 3
        return (("odd", value), ("odd_rate", tx.processing_ms % 2))


def engines() -> list[MetricEngine]:
    shipped = shipped_config().engine
    odd = MetricEngine([(e, d) for e, d in zip(shipped.extractors, _dims(shipped),
                                               strict=True)]
                       + [(OddExtractor({}), [(), ("channel",), ("currency", "channel")])],
                       shipped.windowed_fields)
    return [shipped, odd]


def _dims(engine: MetricEngine) -> list[list[tuple[str, ...]]]:
    """Each extractor's dimensions, as the engine compiled them."""
    out = []
    for c in engine._compiled:
        info = next(iter(c.emits.values()), None)
        out.append([engine.dimensions[i] for i in info.slots] if info else [()])
    return out


ENGINES = engines()

payment = st.builds(
    lambda i, minute, status, channel, currency, decline, amount, ms, risk, country, tx_id: (
        minute, ParsedTransaction(
            transaction_id=tx_id or f"tx-{i}", event_time=datetime.fromtimestamp(
                BASE + minute * 60 + (i % 60), UTC),
            merchant_id=f"m-{i % 3}", customer_id=f"c-{i % 5}", amount_minor=amount,
            currency=currency, channel=channel, payment_method="card",
            status=TransactionStatus(status),
            decline_code=decline if status == "declined" else None, country=country,
            processing_ms=ms, risk_score=risk)),
    # many in one window too: float sums of 9 or more values show their order
    st.integers(0, 10**6), st.one_of(st.integers(-20, 30), st.just(0)),
    st.sampled_from(STATUSES),
    st.sampled_from(["pos", "ecommerce", "mobile"]),
    st.sampled_from(["EUR", "USD", "JPY", "KWD", "XXX"]),
    st.sampled_from([None, "05", "51", "14"]),
    # and amounts at the edge of what float64 holds exactly, and beyond it
    st.one_of(st.integers(0, 10**12), st.sampled_from([0, 899_999, 900_000, 1_000_000]),
              st.sampled_from([2**53 - 1, 2**53, 2**53 + 1, 2**62])),
    st.integers(0, 600_000),
    st.one_of(st.none(), st.floats(0.0, 1.0), st.sampled_from([0.0, -0.0, 0.8, 1.0])),
    st.sampled_from(["DE", "IR", "KP", "US"]),
    st.one_of(st.none(), st.sampled_from(["a\tb", "back\\slash", "new\nline", "é"])),
)


@st.composite
def batches(draw: Any) -> dict[str, Any]:
    size = draw(st.integers(0, 120))  # evenly: hypothesis's own lists are mostly short
    drawn = draw(st.lists(payment, min_size=size, max_size=size))
    gaps = draw(st.lists(st.integers(1, 3), min_size=len(drawn) + 8, max_size=len(drawn) + 8))
    offsets = list(np.cumsum(gaps) + 100)
    kinds = draw(st.lists(st.booleans(), min_size=len(offsets), max_size=len(offsets)))
    payments: dict[int, ParsedTransaction] = {}
    failed: list[tuple[int, int, str]] = []
    it = iter(drawn)
    for offset, is_failed in zip(offsets, kinds, strict=True):
        item = None if is_failed else next(it, None)
        if item is None:
            start = window_start(BASE + draw(st.integers(-20, 30)) * 60, FINEST)
            failed.append((int(offset), start, draw(st.sampled_from(["schema", "rule"]))))
        else:
            payments[int(offset)] = item[1]
    ids = [tx.transaction_id for tx in payments.values()]
    if len(set(ids)) != len(ids):  # ids are unique among a batch's accepted payments
        payments = {o: tx for o, tx in payments.items() if ids.count(tx.transaction_id) == 1}
    received = {o: tx.event_ts + draw(st.sampled_from([-600.0, 0.0, 5.0, 3600.0]))
                for o, tx in payments.items()}
    clock = StreamClock(BASE + draw(st.integers(-30, 30)) * 60,
                        draw(st.sampled_from([-1, 99, 140])))
    return {"payments": payments, "failed": failed, "received": received, "clock": clock,
            "engine": draw(st.sampled_from(ENGINES)), "after": draw(st.integers(90, 200))}


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same types all the way down (1 is not 1.0, -0.0 is not 0.0)."""
    if isinstance(a, float) and isinstance(b, float):
        return (a == b and math.copysign(1, a) == math.copysign(1, b)) or (a != a and b != b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@settings(max_examples=250, deadline=None)
@given(batches())
def test_columnar_path_equals_the_per_event_reference(case):
    payments, engine = case["payments"], case["engine"]
    cols = PaymentColumns(payments, payments.values())
    batch = engine.extract_batch(cols)
    reference = {o: engine.extract(tx, o) for o, tx in payments.items()}

    # metrics, errors and evidence, payment by payment
    for i, (offset, want) in enumerate(reference.items()):
        got = batch.result(i)
        assert same([(info.name, v) for info, v in got.emitted],
                    [(info.name, v) for info, v in want.emitted]), offset
        assert got.errors == want.errors and got.evidence == want.evidence

    # the late split and the stream clock
    clock, ref_clock = StreamClock(**vars_of(case["clock"])), StreamClock(**vars_of(case["clock"]))
    received = np.array(list(case["received"].values()), np.float64)
    late = late_mask(clock, cols, FINEST, GRACE, received)
    on_time, ref_late = split_late(ref_clock, payments, FINEST, GRACE, case["received"])
    assert set(cols.offsets[late].tolist()) == ref_late
    assert (clock.stream_time, clock.last_offset) == (ref_clock.stream_time,
                                                      ref_clock.last_offset)

    # window counts, onto values that already hold part of the batch (a replay)
    for size in (FINEST, 3600):
        got_groups = count_groups(cols, ~late, size)
        want_groups = group_by_window(on_time, size)
        assert [(s, c) for s, c, _ in got_groups] == list(want_groups)
        for (start, channel, positions), entries in zip(got_groups, want_groups.values(),
                                                        strict=True):
            assert (start, channel) in want_groups
            a, b = WindowCounts(3, 10, {"failed": 1}, case["after"]), \
                WindowCounts(3, 10, {"failed": 1}, case["after"])
            assert apply_columns(a, cols, positions) == apply_entries(b, entries)
            assert same(a.to_dict(), b.to_dict())

    # windowed metrics per finest window, whole and from a watermark (a replay)
    windowed = WindowedBatch(batch, FINEST, late, case["failed"], engine.bounds)
    entries: dict[int, list] = {}
    for offset, tx in payments.items():
        entries.setdefault(window_start(tx.event_ts, FINEST), []).append(
            (offset, LATE if offset in ref_late else reference[offset]))
    for offset, start, category in case["failed"]:
        entries.setdefault(start, []).append((offset, failed_event(category)))
    deltas = windowed.deltas()
    assert set(deltas) == set(entries)
    for start, group in entries.items():
        group.sort(key=lambda e: e[0])
        assert windowed.first[start] == group[0][0]
        for after, (got_delta, got_last) in ((-1, deltas[start]),
                                             (case["after"],
                                              windowed.delta(start, case["after"]))):
            want_delta, want_last = observe(group, engine.bounds, after=after)
            assert got_last == want_last
            assert list(got_delta) == list(want_delta)
            assert all(same(got_delta[k].to_list(), want_delta[k].to_list())
                       and got_delta[k].bounds == want_delta[k].bounds for k in want_delta)

    # the sink's dynamic_metrics rows: the same bytes, in any order of payments
    ids = [tx.transaction_id for tx in payments.values()]
    rows = metric_rows(batch, ids, "v\t1")
    order = list(range(len(ids)))[::-1]
    want = "".join(f"{copy(ids[i])}\t{kind}\t{copy(orjson.dumps(data).decode())}\tv\\t1\n"
                   for i in order for kind, data in reference[list(payments)[i]].rows())
    assert select(rows, order) == want.encode()
    flagged: Counter[str] = Counter()
    for result in reference.values():
        for kind, data in result.rows():
            if kind == "compliance":
                flagged.update(rule for rule, v in data.items() if v == 1)
    assert batch.flagged(np.arange(len(ids))) == flagged


@settings(max_examples=100, deadline=None)
@given(st.lists(batches(), min_size=1, max_size=4), st.sampled_from(ENGINES))
def test_the_metrics_of_several_batches_write_as_each_batch_alone(cases, engine):
    """A sink round writes the ``dynamic_metrics`` rows of its batches at once: the same
    bytes as batch by batch, and each payment's metrics, errors and evidence the same."""
    alone = [engine.extract_batch(PaymentColumns(c["payments"], c["payments"].values()))
             for c in cases]
    ids = [[tx.transaction_id for tx in c["payments"].values()] for c in cases]
    merged = BatchMetrics.concat(alone)
    if merged is None:  # only when a metric's values differ in type from batch to batch
        kinds = [{m.values[i].dtype for m in alone if m.values[i] is not None}
                 for i in range(len(alone[0].infos))]
        assert any(len(k) > 1 for k in kinds)
        return
    assert len(merged) == sum(map(len, alone))
    assert b"".join(metric_rows(merged, [i for part in ids for i in part], "v")) == \
        b"".join(row for metrics, part in zip(alone, ids, strict=True)
                 for row in metric_rows(metrics, part, "v"))
    at = 0
    for metrics in alone:
        for i in range(len(metrics)):
            got, want = merged.result(at + i), metrics.result(i)
            assert same([(info.name, v) for info, v in got.emitted],
                        [(info.name, v) for info, v in want.emitted])
            assert got.errors == want.errors and got.evidence == want.evidence
        at += len(metrics)


@settings(max_examples=30, deadline=None)
@given(st.lists(payment, min_size=25, max_size=80), st.sampled_from(ENGINES),
       st.integers(1, 400))
def test_windowed_metrics_of_a_batch_over_many_windows(drawn, engine, spread):
    """Payments in windows far apart (a producer's disorder): each window's delta is the
    reference's, however many windows one batch touches."""
    payments = {}
    for k, (_, tx) in enumerate(drawn):
        when = datetime.fromtimestamp(BASE + (k * spread % 997) * FINEST + k % 60, UTC)
        payments[100 + k] = msgspec.structs.replace(tx, event_time=when,
                                                     event_ts=when.timestamp())
    cols = PaymentColumns(payments, payments.values())
    batch = engine.extract_batch(cols)
    windowed = WindowedBatch(batch, FINEST, np.zeros(len(cols), np.bool_), [], engine.bounds)
    entries: dict[int, list] = {}
    for offset, tx in payments.items():
        entries.setdefault(window_start(tx.event_ts, FINEST), []).append(
            (offset, engine.extract(tx, offset)))
    deltas = windowed.deltas()
    assert set(deltas) == set(entries)
    for start, group in entries.items():
        want_delta, want_last = observe(group, engine.bounds)
        got_delta, got_last = deltas[start]
        assert got_last == want_last and list(got_delta) == list(want_delta)
        assert all(same(got_delta[k].to_list(), want_delta[k].to_list()) for k in want_delta)


@pytest.mark.parametrize("amounts", [[2**53 + 1], [2**53 - 1], [2**53 - 1, 1],
                                     [2**53 - 1, 2**53 - 1], [2**62, 5]])
def test_integer_sums_beyond_what_a_float_holds_stay_exact(amounts):
    """A float64 holds every integer below 2**53: a metric whose values or sums reach it
    is added up as integers (one payment of 2**53 + 1 too, which a float rounds)."""
    payments = {100 + k: ParsedTransaction(
        f"tx-{k}", datetime.fromtimestamp(BASE + k, UTC), "m", "c", amount, "EUR", "pos",
        "card", TransactionStatus.APPROVED, None, "DE", 1) for k, amount in enumerate(amounts)}
    engine = ENGINES[0]
    batch = engine.extract_batch(PaymentColumns(payments, payments.values()))
    windowed = WindowedBatch(batch, FINEST, np.zeros(len(payments), np.bool_), [],
                             engine.bounds)
    [(got, _)] = windowed.deltas().values()
    want, _ = observe([(o, engine.extract(tx, o)) for o, tx in payments.items()],
                      engine.bounds)
    assert list(got) == list(want)
    assert all(same(got[k].to_list(), want[k].to_list()) for k in want)
    assert got["amount_minor|currency=EUR"].sum == sum(amounts)


def vars_of(clock: StreamClock) -> dict[str, Any]:
    return {"stream_time": clock.stream_time, "last_offset": clock.last_offset,
            "checkpoints": list(clock.checkpoints)}


def copy(text: str) -> str:
    return (text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n")
            .replace("\r", "\\r"))


def test_the_test_sees_a_wrong_kernel(monkeypatch):
    """A kernel that is off by one payment fails the comparison above."""
    from pipeline.metrics import ApprovalExtractor

    original = ApprovalExtractor.extract_columns

    def off_by_one(self, cols):
        out = original(self, cols)
        name, values, present = out[0]
        values = values.copy()
        if len(values):
            values[0] = 1 - values[0]
        return [(name, values, present), *out[1:]]

    monkeypatch.setattr(ApprovalExtractor, "extract_columns", off_by_one)
    engine = shipped_config().engine
    tx = ParsedTransaction(transaction_id="t", event_time=datetime.fromtimestamp(BASE, UTC),
                           merchant_id="m", customer_id="c", amount_minor=1, currency="EUR",
                           channel="pos", payment_method="card",
                           status=TransactionStatus.APPROVED,
                           decline_code=None, country="DE", processing_ms=1)
    cols = PaymentColumns([1], [tx])
    got = engine.extract_batch(cols).result(0)
    want = engine.extract(tx, 1)
    assert not same([(i.name, v) for i, v in got.emitted], [(i.name, v) for i, v in want.emitted])
