"""Parsing and validation of the wire format: every bad input is classified and explained."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import CHANNELS, STATUSES, ErrorCategory, TransactionStatus
from pipeline.parse import MAX_MESSAGE_BYTES, Mode
from tests.helpers import VALID_PAYMENT, shipped_config

RECEIVED = datetime(2026, 11, 22, 10, 15, 31, tzinfo=UTC)  # the broker's timestamp


def parse(raw, mode=Mode.FAIL_FAST):
    return shipped_config().validator.with_mode(mode).parse(raw, RECEIVED)


def with_(**changes):
    d = copy.deepcopy(VALID_PAYMENT)
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


def test_the_statuses_and_channels_defined_once_are_the_shipped_schemas():
    schema = json.loads(Path("config/schemas/transaction-v1.json").read_text())
    assert list(STATUSES) == schema["properties"]["status"]["enum"]
    assert list(CHANNELS) == schema["properties"]["channel"]["enum"]


def test_valid_event_is_typed():
    result = parse(orjson.dumps(VALID_PAYMENT))
    assert result.ok and not result.errors and result.category is None
    p = result.transaction
    assert p.amount_minor == 1234 and p.channel == "pos"
    assert p.status is TransactionStatus.APPROVED
    assert p.event_time.utcoffset().total_seconds() == 0
    assert p.event_time.microsecond == 123000
    assert result.raw == orjson.dumps(VALID_PAYMENT)


def test_optional_fields_are_kept():
    p = parse(with_(card_bin="12345678", risk_score=0.5, metadata={"a": "b"},
                    status="declined", decline_code="05")).transaction
    assert (p.card_bin, p.risk_score, p.metadata, p.decline_code) == (
        "12345678", 0.5, {"a": "b"}, "05")


def test_integer_risk_score_is_a_float():
    assert parse(with_(risk_score=1)).transaction.risk_score == 1.0


@pytest.mark.parametrize("text", ["'; DROP TABLE failed_items; --", "<script>alert(1)</script>",
                                  "Zoë's café", "\u202etxet"])
def test_strange_but_legal_strings_are_kept_verbatim(text):
    assert parse(with_(merchant_id=text)).transaction.merchant_id == text


def nested(depth):
    return b'{"a":' * depth + b"1" + b"}" * depth


BAD = [
    # (raw bytes, category, field or None, words the message must contain)
    (b"", ErrorCategory.NOT_JSON, None, "empty"),
    (None, ErrorCategory.NOT_JSON, None, "empty"),
    (b"   ", ErrorCategory.NOT_JSON, None, "not JSON"),
    (b"{", ErrorCategory.NOT_JSON, None, "not JSON"),
    (b"{'a': 1}", ErrorCategory.NOT_JSON, None, "not JSON"),
    (b'{"a": 1,}', ErrorCategory.NOT_JSON, None, "not JSON"),
    (with_() + b"x", ErrorCategory.NOT_JSON, None, "not JSON"),
    (b"\xef\xbb\xbf" + with_(), ErrorCategory.NOT_JSON, None, "not JSON"),  # UTF-8 BOM
    (b"null", ErrorCategory.NOT_OBJECT, None, "JSON null"),
    (b"[1,2]", ErrorCategory.NOT_OBJECT, None, "list"),
    (b"[" + with_() + b"]", ErrorCategory.NOT_OBJECT, None, "list"),
    (b'"text"', ErrorCategory.NOT_OBJECT, None, "str"),
    (b"42", ErrorCategory.NOT_OBJECT, None, "int"),
    (b"true", ErrorCategory.NOT_OBJECT, None, "bool"),
    (b"\xff\xfe{}", ErrorCategory.NOT_UTF8, None, "UTF-8"),
    (b'{"merchant_id": "\xc3\x28"}', ErrorCategory.NOT_UTF8, None, "byte 17"),
    (b'{"a": NaN}', ErrorCategory.NOT_JSON, None, "not JSON"),
    (b'{"a": Infinity}', ErrorCategory.NOT_JSON, None, "not JSON"),
    (b"x" * (MAX_MESSAGE_BYTES + 1), ErrorCategory.TOO_LARGE, None, "over the limit"),
    (with_(metadata={"k": "v" * (MAX_MESSAGE_BYTES)}), ErrorCategory.TOO_LARGE, None,
     "1048576"),
    (nested(100_000), ErrorCategory.NOT_JSON, None, "not JSON"),
    (nested(50), ErrorCategory.SCHEMA, "schema_version", "is required"),
    (b"{}", ErrorCategory.SCHEMA, "schema_version", "schema_version is required"),
    (with_(merchant_id=...), ErrorCategory.SCHEMA, "merchant_id", "merchant_id is required"),
    (with_(amount_minor=12.5), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(amount_minor=12.0), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(amount_minor=1e3), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(amount_minor=-1), ErrorCategory.SCHEMA, "amount_minor", "amount_minor"),
    (with_(amount_minor=10**12 + 1), ErrorCategory.SCHEMA, "amount_minor", "amount_minor"),
    (with_(amount_minor=10**30), ErrorCategory.SCHEMA, "amount_minor", "amount_minor"),
    (with_(amount_minor="12"), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(amount_minor=True), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(amount_minor=None), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(channel="Pos"), ErrorCategory.SCHEMA, "channel", "channel"),
    (with_(channel="POS"), ErrorCategory.SCHEMA, "channel", "channel"),
    (with_(status="ok"), ErrorCategory.SCHEMA, "status", "status"),
    (with_(payment_method="cash"), ErrorCategory.SCHEMA, "payment_method", "payment_method"),
    (with_(currency="eur"), ErrorCategory.SCHEMA, "currency", "currency"),
    (with_(currency="EURO"), ErrorCategory.SCHEMA, "currency", "currency"),
    (with_(country="DEU"), ErrorCategory.SCHEMA, "country", "country"),
    (with_(status="declined"), ErrorCategory.RULE, "decline_code",
     "decline_code is required when status is 'declined'"),
    (with_(status="declined", decline_code=None), ErrorCategory.RULE, "decline_code",
     "declined"),
    (with_(decline_code="0"), ErrorCategory.SCHEMA, "decline_code", "decline_code"),
    (with_(event_time="2026-11-22 10:15:30"), ErrorCategory.SCHEMA, "event_time", "event_time"),
    (with_(event_time="2026-11-22T10:15:30+01:00"), ErrorCategory.SCHEMA, "event_time",
     "event_time"),
    (with_(event_time="2026-11-22T10:15:30.1234Z"), ErrorCategory.SCHEMA, "event_time",
     "event_time"),
    (with_(event_time="2026-02-30T10:15:30Z"), ErrorCategory.SCHEMA, "event_time",
     "not a valid date"),
    (with_(event_time="2026-11-22T24:00:00Z"), ErrorCategory.SCHEMA, "event_time",
     "not a valid date"),
    (with_(event_time=1763806530), ErrorCategory.SCHEMA, "event_time", "event_time"),
    (with_(event_time="2026-11-22T11:15:30Z"), ErrorCategory.RULE, "event_time",
     "after the message was received"),
    (with_(transaction_id="has space"), ErrorCategory.SCHEMA, "transaction_id",
     "transaction_id"),
    (with_(transaction_id="tx-1\n"), ErrorCategory.SCHEMA, "transaction_id", "transaction_id"),
    (with_(transaction_id="1; DROP TABLE x"), ErrorCategory.SCHEMA, "transaction_id",
     "transaction_id"),
    (with_(transaction_id="<b>x</b>"), ErrorCategory.SCHEMA, "transaction_id",
     "transaction_id"),
    (with_(transaction_id=""), ErrorCategory.SCHEMA, "transaction_id", "transaction_id"),
    (with_(transaction_id="x" * 65), ErrorCategory.SCHEMA, "transaction_id", "transaction_id"),
    (with_(merchant_id="m" * 10_000), ErrorCategory.SCHEMA, "merchant_id", "merchant_id"),
    (with_(customer_id=""), ErrorCategory.SCHEMA, "customer_id", "customer_id"),
    (with_(schema_version="2"), ErrorCategory.SCHEMA, "schema_version", "schema_version"),
    (with_(schema_version=1), ErrorCategory.SCHEMA, "schema_version", "schema_version"),
    (with_(processing_ms=600_001), ErrorCategory.SCHEMA, "processing_ms", "processing_ms"),
    (with_(risk_score=1.5), ErrorCategory.SCHEMA, "risk_score", "risk_score"),
    (with_(risk_score=None), ErrorCategory.SCHEMA, "risk_score", "risk_score"),
    (with_(card_bin="12345"), ErrorCategory.SCHEMA, "card_bin", "card_bin"),
    (with_(card_bin=None), ErrorCategory.SCHEMA, "card_bin", "card_bin"),
    (with_(unknown_field=1), ErrorCategory.SCHEMA, "unknown_field", "unknown field"),
    (with_(Channel="pos"), ErrorCategory.SCHEMA, "Channel", "unknown field"),
    (with_(metadata={str(i): "v" for i in range(33)}), ErrorCategory.SCHEMA, "metadata",
     "metadata"),
    (with_(metadata={"k": "v" * 257}), ErrorCategory.SCHEMA, "metadata.k", "metadata"),
    (with_(metadata={"k": 1}), ErrorCategory.SCHEMA, "metadata.k", "metadata"),
    (with_(metadata=["k"]), ErrorCategory.SCHEMA, "metadata", "metadata"),
    (with_(merchant_id="m\x001"), ErrorCategory.SCHEMA, "merchant_id", "NUL character"),
    (with_(metadata={"k": "a\x00"}), ErrorCategory.SCHEMA, "metadata.k", "NUL character"),
]


@pytest.mark.parametrize(("raw", "category", "field", "words"), BAD,
                         ids=[f"{i}-{c.value}" for i, (_, c, _, _) in enumerate(BAD)])
def test_bad_inputs_are_classified_and_explained(raw, category, field, words):
    result = parse(raw)
    assert not result.ok and result.transaction is None
    assert result.category is category
    assert len(result.errors) == 1  # fail-fast
    assert result.field == field
    assert words in result.message
    assert result.raw == (raw or b"")


def test_collect_all_reports_every_error():
    raw = with_(amount_minor=-5, currency="eur", channel="bus", unknown=1)
    fast = parse(raw)
    full = parse(raw, Mode.COLLECT_ALL)
    assert len(fast.errors) == 1
    assert {e.field for e in full.errors} >= {"amount_minor", "currency", "channel", "unknown"}
    assert all(e.message for e in full.errors)
    assert full.category is ErrorCategory.SCHEMA


def test_collect_all_includes_rule_errors_alongside_schema_errors():
    raw = with_(status="declined", currency="eur")
    full = parse(raw, Mode.COLLECT_ALL)
    assert [e.field for e in full.errors] == ["currency", "decline_code"]


def test_offending_values_are_truncated():
    result = parse(with_(currency="X" * 500))
    value = result.errors[0].value
    assert value is not None and len(value) <= 80 and value.endswith("...")


def test_same_bytes_same_verdict_whatever_the_wall_clock():
    raw = with_(event_time="2026-11-22T10:16:30Z")  # 59 s after RECEIVED: allowed
    assert parse(raw).ok
    assert shipped_config().validator.parse(raw, RECEIVED).ok


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw):
    result = parse(raw)
    assert result.ok != bool(result.errors)
    assert result.raw == raw


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(VALID_PAYMENT)
                       + ["decline_code", "card_bin", "risk_score", "metadata"]),
       st.one_of(st.none(), st.booleans(), st.integers(),
                 st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=80), st.lists(st.integers(), max_size=3),
                 st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3)))
def test_one_mutated_field_is_accepted_or_names_that_field(name, value):
    for mode in Mode:
        result = parse(with_(**{name: value}), mode)
        assert result.ok != bool(result.errors)
        if not result.ok:
            assert result.category in (ErrorCategory.SCHEMA, ErrorCategory.RULE)
            assert result.field.split(".")[0] == name
            assert name in result.message
