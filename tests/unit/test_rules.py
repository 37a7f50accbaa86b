"""Rules from config: each rule's verdicts, `when`, and clear errors for a bad config."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.rules import RuleConfigError, RuleContext, build_rules
from tests.helpers import shipped_config

CTX = RuleContext(datetime(2026, 11, 22, 10, 0, tzinfo=UTC).timestamp())
TX = {"amount_minor": 500, "currency": "EUR", "status": "declined", "decline_code": "05",
      "metadata": {"note": "abc"}, "event_time": "2026-11-22T10:04:00Z", "flag": True}


def verdict(spec, source=TX):
    (rule,) = build_rules([spec])
    if not rule.applies(source):
        return "skipped"
    error = rule.check(source, CTX)
    return None if error is None else error.message


@pytest.mark.parametrize(("spec", "expected"), [
    ({"rule": "required", "field": "decline_code"}, None),
    ({"rule": "required", "field": "card_bin"}, "card_bin is required"),
    ({"rule": "required", "field": "metadata.note"}, None),
    ({"rule": "required", "field": "metadata.other"}, "metadata.other is required"),
    ({"rule": "required", "field": "card_bin", "when": {"status": "approved"}}, "skipped"),
    ({"rule": "type", "field": "amount_minor", "type": "integer"}, None),
    ({"rule": "type", "field": "flag", "type": "integer"}, "flag must be of type integer"),
    ({"rule": "type", "field": "currency", "type": "number"}, "currency must be of type number"),
    ({"rule": "range", "field": "amount_minor", "max": 1000}, None),
    ({"rule": "range", "field": "amount_minor", "max": 100},
     "amount_minor must be at most 100 (got 500)"),
    ({"rule": "range", "field": "amount_minor", "min": 1000, "when": {"currency": "EUR"}},
     "amount_minor must be at least 1000 when currency is 'EUR' (got 500)"),
    ({"rule": "range", "field": "absent", "min": 1}, None),
    ({"rule": "pattern", "field": "decline_code", "pattern": "[0-9]{2}"}, None),
    ({"rule": "pattern", "field": "decline_code", "pattern": "[0-9]"},
     "decline_code must match [0-9] (got '05')"),
    ({"rule": "allowed_values", "field": "currency", "values": ["EUR", "USD"]}, None),
    ({"rule": "allowed_values", "field": "currency", "values": ["USD"]},
     "currency must be one of 'USD' (got 'EUR')"),
    ({"rule": "event_time_skew", "max_future_seconds": 300}, None),
    ({"rule": "event_time_skew", "max_future_seconds": 60},
     "event_time is 240 s after the message was received (at most 60 s allowed)"),
])
def test_rule_verdicts(spec, expected):
    assert verdict(spec) == expected


@pytest.mark.parametrize(("specs", "words"), [
    ([{"rule": "no_such_rule"}], "unknown rule 'no_such_rule'"),
    ([{"field": "x"}], "unknown rule None"),
    ([{"rule": "range", "field": "x"}], "give min, max or both"),
    ([{"rule": "range", "field": "x", "max": 1, "maxx": 2}], "unexpected keyword"),
    ([{"rule": "type", "field": "x", "type": "float"}], "unknown type 'float'"),
    ([{"rule": "pattern", "field": "x", "pattern": "("}], "bad pattern"),
    ([{"rule": "allowed_values", "field": "x", "values": []}], "the list is empty"),
])
def test_bad_rule_config_is_a_clear_error(specs, words):
    with pytest.raises(RuleConfigError, match=words.replace("(", r"\(")):
        build_rules(specs)


def test_the_shipped_config_loads():
    validator = shipped_config().validator
    assert [r.name for r in validator.rules] == ["required", "event_time_skew"]
    assert validator.fast is not None


@pytest.mark.parametrize("max_past", [None, 0, 30, 3600])
@pytest.mark.parametrize("ahead", [-3601, -3600, -30.5, -30, 0, 0.25, 60, 119.999, 120, 121])
def test_the_typed_payments_event_time_verdict_is_the_dicts(max_past, ahead):
    """The typed payment's skew check reads its precomputed ``event_ts``; it gives the
    verdict and the message the decoded object gets, at and around every bound."""
    from models.events import ParsedTransaction, TransactionStatus

    when = datetime.fromtimestamp(CTX.received_ts + ahead, UTC)
    tx = ParsedTransaction(transaction_id="t", event_time=when, merchant_id="m",
                           customer_id="c", amount_minor=1, currency="EUR", channel="pos",
                           payment_method="card", status=TransactionStatus.APPROVED,
                           decline_code=None, country="DE", processing_ms=1)
    spec = {"rule": "event_time_skew", "max_future_seconds": 120}
    if max_past is not None:
        spec["max_past_seconds"] = max_past
    (rule,) = build_rules([spec])
    typed, decoded = rule.check(tx, CTX), rule.check({"event_time": when.isoformat()}, CTX)
    assert (typed is None) == (decoded is None)
    assert typed is None or typed.message == decoded.message
