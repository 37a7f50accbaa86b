"""Hostile records are verdicts, never crashes: the pure parts of the poison-pill defence.

Each test builds the input an attacker could send (any producer sets the value, the
headers and the record timestamp) and checks the bound that keeps it from stopping the
worker. The same classes run end to end on the real broker in tests/e2e/test_poison.py.
"""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.cli import finish_output, output_target, printable
from models.events import ErrorCategory, FailedMessage, ParsedTransaction, ValidationError
from pipeline.histogram import Histogram
from pipeline.parse import Validator
from pipeline.records import (
    DEAD_LETTER_MAX_BYTES,
    INT4_MAX,
    bounded_int,
    clean_json,
    clean_text,
    dead_letter_value,
    record_time,
    record_times,
)
from pipeline.rules import EventTimeSkewRule, RuleConfigError, build_rules
from pipeline.schema import load_schema
from pipeline.windows import (
    OVERFLOW_DIMENSION,
    WINDOW_VALUE_MAX_BYTES,
    StreamClock,
    WindowMetrics,
    split_late,
)
from storage.postgres import _failed_row, _transaction_row
from tables.seen import _chunked

SCHEMA = load_schema(Path("config/schemas/transaction-v1.json"))
NOW = 1_764_756_000.0  # 2025-12-03T10:00:00Z


def payment(**changes: object) -> dict:
    base = {"schema_version": "1", "transaction_id": "t1",
            "event_time": "2025-12-03T09:59:00Z", "merchant_id": "m1", "customer_id": "c1",
            "amount_minor": 1200, "currency": "EUR", "channel": "pos",
            "payment_method": "card", "status": "approved", "country": "DE",
            "processing_ms": 40}
    base.update(changes)
    return base


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(SCHEMA, build_rules([
        {"rule": "event_time_skew", "max_future_seconds": 120,
         "max_past_seconds": 365 * 86400}]))


# -- strings that cannot be encoded ---------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"customer_id": "c\\ud800"}',
    json.dumps(payment()).replace('"c1"', '"c\\udfff"').encode(),
    json.dumps(payment(metadata={"k": "v"})).replace('"k"', '"k\\ud800"').encode(),
    json.dumps(payment()).replace('"country"', '"x\\ud800": 1, "country"').encode(),
])
def test_a_lone_surrogate_anywhere_is_not_utf8(validator, raw):
    result = validator.parse(raw, NOW)
    assert result.category is ErrorCategory.NOT_UTF8
    assert "lone surrogate" in result.message
    item = FailedMessage(raw, result.category, result.errors, "payments", 0, 1,
                         datetime.fromtimestamp(NOW, UTC))
    json.loads(dead_letter_value(item.to_dict(payload=False), raw))  # encodes


def test_a_surrogate_pair_is_one_character_and_accepted(validator):
    raw = json.dumps(payment(customer_id="c\U0001f600"), ensure_ascii=True).encode()
    result = validator.parse(raw, NOW)
    assert result.ok and result.transaction.customer_id == "c\U0001f600"


def test_a_repeated_key_is_refused_not_last_one_wins(validator):
    raw = json.dumps(payment())[:-1].encode() + b', "amount_minor": 999999999}'
    result = validator.parse(raw, NOW)
    assert result.category is ErrorCategory.SCHEMA
    assert result.errors[0].field == "amount_minor" and result.errors[0].rule == "unique_keys"
    nested = json.dumps(payment(metadata={"a": "1"})).replace('"a": "1"', '"a": "1", "a": "2"')
    assert validator.parse(nested.encode(), NOW).errors[0].rule == "unique_keys"


def test_spacing_and_escaped_quotes_take_the_slow_path_to_the_same_verdict(validator):
    spaced = json.dumps(payment(), separators=(" , ", " : ")).encode()
    quoted = json.dumps(payment(metadata={"note": 'say "hi": twice'})).encode()
    assert validator.parse(spaced, NOW).ok and validator.parse(quoted, NOW).ok


# -- ISO codes ------------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value", "words"), [
    ("currency", "ZZZ", "ISO 4217"), ("currency", "ABC", "ISO 4217"),
    ("country", "QQ", "ISO 3166-1"), ("country", "XK", "ISO 3166-1"),
])
def test_currency_and_country_must_be_iso_codes(validator, field, value, words):
    result = validator.parse(json.dumps(payment(**{field: value})).encode(), NOW)
    assert result.category is ErrorCategory.SCHEMA
    assert result.errors[0].field == field and words in result.message


# -- record timestamps and headers ----------------------------------------------------------

@pytest.mark.parametrize("stamp", [None, float("nan"), 0.001, -0.001, 253_402_300_800.0,
                                   NOW + 3600, NOW - 91 * 86400])
def test_an_implausible_record_time_is_replaced_by_the_arrival(stamp):
    assert record_time(stamp, NOW) == NOW


@pytest.mark.parametrize("stamp", [NOW, NOW - 60, NOW + 30, NOW - 89 * 86400])
def test_a_plausible_record_time_is_kept(stamp):
    assert record_time(stamp, NOW) == stamp


@settings(max_examples=300, deadline=None)
@given(st.lists(st.none() | st.floats() | st.sampled_from(
    [NOW, NOW - 60, NOW + 60, NOW + 60.000001, NOW - 90 * 86400, NOW - 90 * 86400 - 1e-6]
) | st.floats(NOW - 91 * 86400, NOW + 61), max_size=30))
def test_a_batch_s_record_times_are_each_one_s(stamps):
    """At once, as one at a time: NaN, None, infinities and the bounds included."""
    assert record_times(stamps, NOW) == [record_time(t, NOW) for t in stamps]
    # an integer no float holds: one at a time
    assert record_times([*stamps, 10**400], NOW) == [*(record_time(t, NOW) for t in stamps), NOW]


@pytest.mark.parametrize(("raw", "want"), [
    (b"3", 3), (b"3000000000", None), (b"-1", None), (b"x", None), (b"", None), (None, None),
    (b"1" * 5000, None), (str(INT4_MAX).encode(), INT4_MAX),
])
def test_integer_headers_are_bounded_to_their_column(raw, want):
    assert bounded_int(raw, 0, INT4_MAX) == want


# -- dead-letter records and failed_items rows ----------------------------------------------

def _failed(raw: bytes, errors: tuple = ()) -> FailedMessage:
    errors = errors or (ValidationError(None, "json", "message is not JSON"),)
    return FailedMessage(raw, ErrorCategory.NOT_JSON, errors, "payments", 3, 77,
                         datetime.fromtimestamp(NOW, UTC), key=b"m1")


@pytest.mark.parametrize("size", [0, 10, 600_000, 760_000, 1_048_576])
def test_a_dead_letter_record_never_exceeds_the_bound(size):
    raw = os.urandom(size)
    value = dead_letter_value(_failed(raw).to_dict(payload=False), raw)
    assert len(value) <= DEAD_LETTER_MAX_BYTES
    record = json.loads(value)
    kept = base64.b64decode(record["raw_payload_b64"])
    assert raw.startswith(kept) and record["raw_payload_bytes"] == size
    assert record["raw_payload_truncated"] is (kept != raw)
    assert record["source_offset"] == 77 and record["error_category"] == "not_json"


def test_a_dead_letter_record_with_huge_errors_is_cut_too():
    errors = tuple(ValidationError(f"f{i}", "x", "m" * 200) for i in range(20_000))
    item = _failed(b"{}", errors)
    value = dead_letter_value(item.to_dict(payload=False), item.raw)
    record = json.loads(value)
    assert len(value) <= DEAD_LETTER_MAX_BYTES
    assert len(record["errors"]) == 20 and record["errors_truncated"] == 20_000
    assert base64.b64decode(record["raw_payload_b64"]) == b"{}"


def test_failed_items_text_is_storable_whatever_it_holds():
    nasty = "a\x00b\ud800c"
    item = FailedMessage(b"x", ErrorCategory.SCHEMA,
                         (ValidationError(nasty, "additionalProperties", f"unknown: {nasty}"),),
                         "payments", 0, 1, datetime.fromtimestamp(NOW, UTC))
    row = _failed_row(item)
    for text in (row[2], row[7], row[8]):
        assert "\x00" not in text and "\\u0000" not in text
        text.encode("utf-8")
    assert clean_text(nasty) == "a\\x00b\\ud800c"
    assert json.loads(clean_json([nasty])) == ["a\\x00b\\ud800c"]


def test_an_accepted_payment_makes_a_copy_row_that_encodes(validator):
    raw = json.dumps(payment(customer_id="c\t\n\\\U0001f600", metadata={"k\t": "v\\n"})).encode()
    tx = validator.parse(raw, NOW).transaction
    assert tx is not None
    row = _transaction_row(tx, "payments", 1, 5)
    row.encode("utf-8")
    assert row.count("\t") == 17 and row.endswith("\n") and row.count("\n") == 1


# -- state values ---------------------------------------------------------------------------

def test_seen_chunks_stay_under_the_record_limit_whatever_the_ids():
    entries = [("t" * 64, i, NOW + i, "\x01\U0001f600\"" * 21, NOW, 10**12, "EUR")
               for i in range(30_000)]
    chunks = _chunked(entries)
    assert sum(len(c) for c in chunks) == len(entries)
    sizes = [len(orjson.dumps({"ts": NOW, "ids": [list(e) for e in c]})) for c in chunks]
    assert max(sizes) < 600_000


def test_a_window_value_stays_bounded_however_many_dimensions():
    value = WindowMetrics()
    for i in range(20_000):
        h = Histogram((10.0, 100.0, 1000.0))
        h.observe(float(i))
        value.merge({f"amount|currency=C{i:05d}": h})
    stored = orjson.dumps(value.to_dict())
    assert len(stored) <= WINDOW_VALUE_MAX_BYTES
    overflow = value.hists[f"amount|{OVERFLOW_DIMENSION}"]
    assert overflow.count + sum(h.count for k, h in value.hists.items()
                                if k != f"amount|{OVERFLOW_DIMENSION}") == 20_000


# -- time -----------------------------------------------------------------------------------

def _tx(event_ts: float) -> ParsedTransaction:
    return ParsedTransaction(
        transaction_id="t", event_time=datetime.fromtimestamp(event_ts, UTC), merchant_id="m",
        customer_id="c", amount_minor=1, currency="EUR", channel="pos",
        payment_method="card", status="approved", decline_code=None, country="DE",
        processing_ms=1)


def test_one_event_from_the_future_does_not_make_on_time_payments_late():
    clock = StreamClock()
    # offset 0 dated 10 days ahead of its record time; then on-time payments
    batch = {0: _tx(NOW + 10 * 86400), **{i: _tx(NOW + i) for i in range(1, 31)}}
    received = {i: NOW + i for i in range(31)}
    on_time, late = split_late(clock, batch, 300, 120, received)
    assert late == set() and len(on_time) == 31
    assert clock.stream_time == NOW + 30


def test_event_time_bounds_are_finite_and_the_past_one_applies(validator):
    for bad in ({"max_future_seconds": float("inf")}, {"max_future_seconds": -1},
                {"max_future_seconds": 7200}, {"max_past_seconds": float("nan")},
                {"max_future_seconds": "300"}):
        with pytest.raises(RuleConfigError):
            build_rules([{"rule": "event_time_skew", **bad}])
    rule = EventTimeSkewRule(120, max_past_seconds=86400)
    assert rule.max_past == 86400
    old = validator.parse(json.dumps(payment(event_time="1970-01-01T00:00:00Z")).encode(), NOW)
    assert old.category is ErrorCategory.RULE and "before the message was received" in old.message
    ahead = validator.parse(json.dumps(payment(event_time="2025-12-03T10:03:00Z")).encode(), NOW)
    assert ahead.category is ErrorCategory.RULE and "after the message" in ahead.message


# -- the operator's side --------------------------------------------------------------------

def test_output_refuses_what_is_not_a_regular_file_and_replaces_atomically(tmp_path):
    target = tmp_path / "out.jsonl"
    target.write_text("old")
    tmp = output_target(target)
    assert tmp.parent == tmp_path and tmp != target
    tmp.write_text("new")
    finish_output(tmp, target)
    assert target.read_text() == "new" and not tmp.exists()
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(OSError, match="not a regular file"):
        output_target(link)
    with pytest.raises(OSError, match="not a regular file"):
        output_target(Path("/dev/null"))
    assert Path("/dev/null").is_char_device()


def test_control_characters_reach_the_terminal_escaped():
    shown = printable("a\x1b[2Jb\x07c\u202ed\x9be\tf")
    assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
    assert "\x9b" not in shown
    assert shown.startswith("a\\x1b[2Jb\\x07c\\u202ed")
    assert "\t" in shown  # tabs and newlines are layout, kept
    assert printable(3) == "3"
