"""A batch parsed at once (the rules' kernels over its payments) gives what parsing each
message on its own gives: the same verdicts, categories and messages, in order."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import STATUSES
from pipeline.parse import Mode, Validator
from pipeline.rules import EventTimeSkewRule, RequiredRule, build_rules
from pipeline.schema import load_schema
from tests.helpers import VALID_PAYMENT, shipped_config

SCHEMA = load_schema(Path("config/schemas/transaction-v1.json"))
EVENT_TS = datetime.fromisoformat(VALID_PAYMENT["event_time"]).timestamp()

RULE_SETS = {
    "shipped": shipped_config().validator.rules,
    # a rule with no kernel: every payment is checked one at a time
    "no kernel": build_rules([{"rule": "range", "field": "amount_minor", "max": 5000},
                              {"rule": "event_time_skew", "max_future_seconds": 60}]),
    # conditions on two fields, one of them an enum, and a field the struct lacks
    "conditions": build_rules([
        {"rule": "required", "field": "card_bin",
         "when": {"payment_method": "card", "channel": "pos"}},
        {"rule": "required", "field": "risk_score", "when": {"status": "declined"}},
        {"rule": "event_time_skew", "max_future_seconds": 0, "max_past_seconds": 30,
         "when": {"currency": "EUR"}},
    ]),
    # a dotted path: the kernel gives way to check
    "dotted": build_rules([{"rule": "required", "field": "metadata.note"},
                           {"rule": "required", "field": "decline_code",
                            "when": {"metadata.kind": "x"}}]),
}


@st.composite
def message(draw) -> bytes | None:
    """Mostly payments near the rules' edges; some broken or arbitrary bytes."""
    kind = draw(st.integers(0, 19))
    if kind == 0:
        return draw(st.none() | st.binary(max_size=60))
    body = dict(VALID_PAYMENT)
    body["status"] = draw(st.sampled_from(STATUSES))
    body["channel"] = draw(st.sampled_from(["pos", "ecommerce"]))
    body["currency"] = draw(st.sampled_from(["EUR", "USD"]))
    for name, values in (("decline_code", [None, "05"]), ("card_bin", [None, "123456"]),
                         ("risk_score", [None, 0.5]),
                         ("metadata", [{}, {"note": "n"}, {"kind": "x"}, {"note": "\t\\"}])):
        if draw(st.booleans()):
            body[name] = draw(st.sampled_from(values))
    if kind == 1:
        body["amount_minor"] = draw(st.sampled_from([-1, 1.5, "1"]))  # the schema's
    if kind == 2:
        body["transaction_id"] = draw(st.sampled_from(["tx\u0000", "tx\\", "t x", "tx\x1fb"]))
    text = json.dumps(body)
    if kind == 3:
        text = text.replace('"status"', '"status" ')  # spacing: the slow path decides
    if kind == 4:  # the pattern's shape, but not a real date: the slow path explains
        text = text.replace(VALID_PAYMENT["event_time"], "2026-02-30T10:00:00Z")
    if kind == 5:  # fractions of a second, 1 to 3 digits
        text = text.replace(VALID_PAYMENT["event_time"], draw(st.sampled_from(
            ["2026-11-22T10:00:00.5Z", "2026-11-22T10:00:00.25Z", "1970-01-01T00:00:00Z"])))
    if kind == 7:  # an escaped NUL where no pattern would refuse it
        name, value = draw(st.sampled_from([
            ("merchant_id", "m\u0000"), ("customer_id", "\u0000"),
            ("metadata", {"note": "a\u0000"}), ("metadata", {"\u0000": "x"})]))
        body[name] = value
        text = json.dumps(body)
    if kind == 6:  # the contract's patterns, just missed (matched over the batch at once)
        name, value = draw(st.sampled_from([
            ("card_bin", "12345"), ("card_bin", "1234567"), ("card_bin", "\u0661" * 6),
            ("event_time", "2026-11-22 10:00:00Z"), ("event_time", "2026-11-22T10:00:00.1234Z"),
            ("transaction_id", "x" * 65), ("transaction_id", "")]))
        body[name] = value
        text = json.dumps(body)
    return text.encode()


# record times at and around the skew rule's bounds, as seconds from the event time
OFFSETS = st.sampled_from([0.0, 30.0, 30.000001, -60.0, -59.999999, -60.000001, -120.0,
                           -120.5, 365 * 86400.0, 365 * 86400 + 1.0, 1e-9])


@pytest.mark.parametrize("rules", sorted(RULE_SETS))
@pytest.mark.parametrize("mode", [Mode.FAIL_FAST, Mode.COLLECT_ALL])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(st.tuples(message(), OFFSETS), max_size=40))
def test_a_batch_gets_each_messages_own_verdict(rules, mode, batch):
    validator = Validator(SCHEMA, RULE_SETS[rules], mode)
    raws = [raw for raw, _ in batch]
    received = [EVENT_TS + offset for _, offset in batch]
    results = validator.parse_many(raws, received)
    assert results == [validator.parse(raw, at) for raw, at in zip(raws, received, strict=True)]
    # ... and what the authoritative path alone gives (no fast decode, no batch typing)
    slow = Validator(SCHEMA, RULE_SETS[rules], mode, fast_path=False)
    assert results == [slow.parse(raw, at) for raw, at in zip(raws, received, strict=True)]
    for result in results:  # the batch's event times, converted at once, are each one's own
        tx = result.transaction
        assert tx is None or tx.event_ts == tx.event_time.timestamp()


def test_without_the_fast_path_each_message_is_parsed_alone():
    validator = Validator(SCHEMA, RULE_SETS["shipped"], fast_path=False)
    raws = [json.dumps(VALID_PAYMENT).encode(), b"{"]
    assert validator.parse_many(raws, [EVENT_TS, EVENT_TS]) == [
        validator.parse(raw, EVENT_TS) for raw in raws]


def test_the_kernels_clear_what_check_clears_and_leave_the_rest():
    no_rules = Validator(SCHEMA)
    bodies = [dict(VALID_PAYMENT), {**VALID_PAYMENT, "status": "declined"},
              {**VALID_PAYMENT, "status": "declined", "decline_code": "05"},
              {**VALID_PAYMENT, "event_time": "2026-11-22T10:20:30Z"}]
    txs = [no_rules.parse(json.dumps(b).encode()).transaction for b in bodies]
    assert all(tx is not None for tx in txs)
    received = np.full(len(txs), EVENT_TS)
    required = RequiredRule("decline_code", when={"status": "declined"})
    skew = EventTimeSkewRule(max_future_seconds=120)
    assert required.passes(txs, received).tolist() == [True, False, True, True]
    assert skew.passes(txs, received).tolist() == [True, True, True, False]
    # the record time is each payment's own
    assert skew.passes(txs, received - 200).tolist() == [False, False, False, False]
    assert RequiredRule("metadata.note").passes(txs, received) is None
    assert RequiredRule("decline_code", when={"metadata.k": 1}).passes(txs, received) is None
    assert build_rules([{"rule": "range", "field": "amount_minor", "max": 1}])[0].passes(
        txs, received) is None


def test_record_times_are_floats_of_each_message():
    """What the worker passes: one record time per message, not one per batch."""
    validator = shipped_config().validator
    raw = json.dumps(VALID_PAYMENT).encode()
    first, second = validator.parse_many([raw, raw], [EVENT_TS, EVENT_TS - 1000])
    assert first.ok
    assert not second.ok
    assert second.errors[0].rule == "event_time_skew"
