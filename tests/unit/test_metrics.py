"""Metric extractors and compliance rules, table-driven, with their boundaries."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import yaml
from hypothesis import example, given, settings
from hypothesis import strategies as st

from config import CONFIG_DIR
from models.events import ParsedTransaction, TransactionStatus
from pipeline.columns import PaymentColumns
from pipeline.config import engine_from_config
from pipeline.metrics import MetricEngine, MetricsConfigError, MetricType
from tests.helpers import shipped_config

T0 = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def tx(**changes) -> ParsedTransaction:
    fields = dict(
        transaction_id="tx-1", event_time=T0, merchant_id="m1", customer_id="c1",
        amount_minor=4500, currency="EUR", channel="pos", payment_method="card",
        status=TransactionStatus.APPROVED, decline_code=None, country="DE", processing_ms=180,
        risk_score=0.2)
    fields.update(changes)
    return ParsedTransaction(**fields)


@pytest.fixture(scope="module")
def engine():
    return shipped_config().engine


def values(engine, payment, offset=10, history=()):
    result = engine.extract(payment, offset, lambda customer: history)
    assert not result.errors
    return {(m.name, m.dimension): m.value for m in result.metrics}


def test_default_configuration_yields_at_least_50_metrics_per_payment(engine):
    for status in TransactionStatus:
        payment = tx(status=status, decline_code="05" if status == "declined" else None,
                     risk_score=None)
        result = engine.extract(payment)
        assert len(result) >= 50, status
        assert len(result.metrics) == len(result)


def test_metric_types_and_dimensions(engine):
    v = values(engine, tx())
    assert v[("transactions", "")] == 1 and v[("transactions", "channel=pos")] == 1
    assert v[("transactions_approved", "merchant_id=m1")] == 1
    assert v[("amount_minor", "currency=EUR,channel=pos")] == 4500
    assert v[("amount_major", "currency=EUR")] == 45.0
    assert v[("processing_ms", "payment_method=card")] == 180
    assert v[("approval", "country=DE")] == 1
    kinds = {m.name: m.type for m in engine.extract(tx()).metrics}
    assert kinds["amount_minor"] is MetricType.HISTOGRAM
    assert kinds["amount_major"] is MetricType.GAUGE
    assert kinds["failure"] is MetricType.RATE
    assert kinds["transactions"] is MetricType.COUNTER


def test_windowed_metrics_leave_out_high_cardinality_dimensions(engine):
    windowed = engine.extract(tx()).windowed()
    assert ("transactions", "channel=pos", 1) in windowed
    assert not any("merchant_id" in dim for _, dim, _ in windowed)


@pytest.mark.parametrize("changes, expected", [
    ({"currency": "JPY", "amount_minor": 4500}, 4500.0),  # no minor unit
    ({"currency": "KWD", "amount_minor": 4500}, 4.5),  # three decimals
    ({"currency": "CHF", "amount_minor": 4500}, 45.0),  # default exponent
])
def test_amount_major_follows_the_currency_exponent(engine, changes, expected):
    assert values(engine, tx(**changes))[("amount_major", f"currency={changes['currency']}")] \
        == expected


@pytest.mark.parametrize("status, code, soft, hard, approval, authorization, failure", [
    ("approved", None, 0, 0, 1, 1, 0),
    ("declined", "51", 1, 0, 0, 0, 0),  # insufficient funds: soft
    ("declined", "14", 0, 1, 0, 0, 0),  # invalid card: hard
    ("failed", None, 0, 0, 0, None, 1),
    ("pending", None, 0, 0, 0, None, 0),  # not decided: no authorization metric
])
def test_status_extractors(engine, status, code, soft, hard, approval, authorization, failure):
    v = values(engine, tx(status=TransactionStatus(status), decline_code=code))
    assert v[("decline_soft", "")] == soft and v[("decline_hard", "")] == hard
    assert v[("approval", "")] == approval
    assert v.get(("authorization", "")) == authorization
    assert v[("failure", "channel=pos")] == failure
    assert v[(f"transactions_{status}", "")] == 1


@pytest.mark.parametrize("currency, amount, flagged", [
    ("EUR", 999_999, 0), ("EUR", 1_000_000, 1),  # exactly at the threshold: reported
    ("JPY", 1_499_999, 0), ("JPY", 1_500_000, 1),
    ("CHF", 10**12, 0),  # no threshold configured for the currency
])
def test_large_amount_threshold_per_currency(engine, currency, amount, flagged):
    v = values(engine, tx(currency=currency, amount_minor=amount))
    assert v[("compliance_large_amount", "")] == flagged


@pytest.mark.parametrize("country, flagged", [("IR", 1), ("KP", 1), ("DE", 0)])
def test_high_risk_country(engine, country, flagged):
    assert values(engine, tx(country=country))[("compliance_high_risk_country", "")] == flagged


@pytest.mark.parametrize("score, flagged", [(None, 0), (0.79, 0), (0.8, 1), (1.0, 1)])
def test_high_risk_score(engine, score, flagged):
    assert values(engine, tx(risk_score=score))[("compliance_high_risk_score", "")] == flagged


def test_the_rules_over_a_customer_emit_no_per_event_metric(engine):
    """velocity and structuring are judged per customer across merchants when payments
    are stored (storage.customer_rules, tests/integration/test_customer_rules.py): a
    payment alone says nothing about them."""
    assert sorted(r.kind for r in engine.customer_rules) == ["structuring", "velocity"]
    names = {m.name for m in engine.extract(tx(amount_minor=950_000)).metrics}
    assert not names & {"compliance_velocity", "compliance_structuring"}
    assert "compliance_large_amount" in names


def test_a_failing_extractor_loses_neither_the_others_nor_the_payment(engine):
    def broken(tx, offset, history):
        raise RuntimeError("extractor bug")

    import copy

    fresh = copy.copy(engine)  # the module's engine stays whole
    fresh._calls = list(engine._calls)
    i = next(i for i, call in enumerate(fresh._calls) if call[2] == "approval")
    fresh._calls[i] = (broken, *fresh._calls[i][1:])
    result = fresh.extract(tx(), 10)
    assert {e.extractor for e in result.errors} == {"approval"}
    names = {m.name for m in result.metrics}
    assert "approval" not in names
    assert {"transactions", "amount_minor", "compliance_large_amount"} <= names


def config(**changes):
    data = yaml.safe_load((CONFIG_DIR / "metrics.yaml").read_text())
    data.update(changes)
    return data


def compliance(rules):
    data = yaml.safe_load((CONFIG_DIR / "compliance.yaml").read_text())
    data["rules"] = rules
    return data


@pytest.mark.parametrize("metrics, rules, message", [
    (config(extractors=[{"extractor": "nope", "dimensions": [[]]}]), None,
     r"extractors\[0\]: unknown extractor 'nope'"),
    (config(extractors=[{"extractor": "status", "dimensions": [["colour"]]}]), None,
     r"unknown field 'colour'"),
    (config(extractors=[{"extractor": "status"}]), None, r"'dimensions' must be"),
    (config(extractors=[{"extractor": "amount", "buckets": [100, 50], "dimensions": [[]]}]),
     None, r"extractors\[0\]: .*buckets: .*overlap"),
    (config(extractors=[{"extractor": "amount", "dimensions": [[]]}]), None,
     r"missing parameter 'buckets'"),
    (config(extractors=[{"extractor": "status", "dimensions": [[]]},
                        {"extractor": "status", "dimensions": [[]]}]), None,
     r"metric 'transactions' is defined twice"),
    (config(windowed_dimensions=["colour"]), None, r"windowed_dimensions .* 'colour'"),
    (config(), [{"rule": "velocity", "max_payments": 0, "within_seconds": 60}],
     r"rules\[0\]: .*max_payments must be positive"),
    (config(), [{"rule": "large_amount", "thresholds_minor": {"EUR": 1.5}}],
     r"thresholds_minor.EUR is 1.5"),
    (config(), [{"rule": "structuring", "thresholds_minor": {"EUR": 10}, "min_payments": 2,
                 "within_seconds": 60, "lower_fraction": 1.5}], r"lower_fraction 1.5"),
    (config(), [{"rule": "status"}], r"unknown rule 'status'"),
])
def test_bad_configuration_is_rejected_naming_the_entry(metrics, rules, message):
    with pytest.raises(MetricsConfigError, match=message):
        engine_from_config(metrics, compliance(rules) if rules is not None else None)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.integers(0, 3)),
                min_size=1, max_size=60),
       st.sampled_from([("channel", "currency"), ("currency", "merchant_id", "channel"),
                        ("merchant_id", "customer_id", "currency")]))
@example([(k, 40 - k, k % 4) for k in range(30)], ("merchant_id", "customer_id", "currency"))
def test_a_dimension_of_several_fields_labels_each_payment_with_its_values(rows, fields):
    """Each payment's code names its own values, every label once, in the order of the
    combined codes: from a table of the combinations when there are few, from a sort
    when there are many (three fields of 40 values each)."""
    payments = [ParsedTransaction(
        f"t{k}", datetime(2026, 1, 1, tzinfo=UTC), f"m{a}", f"c{b}", 1, f"C{c}", f"ch{a % 7}",
        "card", TransactionStatus.APPROVED, None, "DE", 1) for k, (a, b, c) in enumerate(rows)]
    cols = PaymentColumns(range(len(payments)), payments)
    codes, labels = MetricEngine._dimension_codes(cols, fields)
    assert [labels[c] for c in codes.tolist()] == [
        ",".join(f"{f}={getattr(p, f)}" for f in fields) for p in payments]
    assert len(set(labels)) == len(labels) == len(set(codes.tolist()))
    combined = [tuple(cols.codes(f)[0][i] for f in fields) for i in range(len(payments))]
    firsts = {}
    for code, key in zip(codes.tolist(), combined, strict=True):
        firsts.setdefault(code, key)
    assert [firsts[c] for c in range(len(labels))] == sorted(firsts.values())
