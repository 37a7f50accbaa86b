"""Parsing and schema validation of the wire format."""

from __future__ import annotations

import copy
import json

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.events import ErrorCategory, ParseFailure, Payment
from pipeline.parse import MAX_MESSAGE_BYTES, parse_payment

VALID = {
    "schema_version": "1",
    "transaction_id": "tx-1",
    "event_time": "2026-11-22T10:15:30.123Z",
    "merchant_id": "m1",
    "customer_id": "c1",
    "amount_minor": 1234,
    "currency": "EUR",
    "channel": "pos",
    "payment_method": "card",
    "status": "approved",
    "country": "DE",
    "processing_ms": 120,
}


def with_(**changes):
    d = copy.deepcopy(VALID)
    for k, v in changes.items():
        if v is ...:
            d.pop(k)
        else:
            d[k] = v
    return json.dumps(d).encode()


def test_valid_event_is_typed():
    p = parse_payment(orjson.dumps(VALID))
    assert isinstance(p, Payment)
    assert p.amount_minor == 1234 and p.channel == "pos"
    assert p.event_time.utcoffset().total_seconds() == 0
    assert p.event_time.microsecond == 123000


def test_optional_fields_are_kept():
    p = parse_payment(with_(card_bin="12345678", risk_score=0.5, metadata={"a": "b"},
                            status="declined", decline_code="05"))
    assert isinstance(p, Payment)
    assert (p.card_bin, p.risk_score, p.metadata, p.decline_code) == (
        "12345678", 0.5, {"a": "b"}, "05")


BAD = [
    # (raw bytes, category, field or None, words the message must contain)
    (b"", ErrorCategory.NOT_JSON, None, "not JSON"),
    (None, ErrorCategory.NOT_JSON, None, "no value"),
    (b"null", ErrorCategory.NOT_OBJECT, None, "NoneType"),
    (b"[1,2]", ErrorCategory.NOT_OBJECT, None, "list"),
    (b'"text"', ErrorCategory.NOT_OBJECT, None, "str"),
    (b"\xff\xfe{}", ErrorCategory.NOT_UTF8, None, "UTF-8"),
    (b'{"a": NaN}', ErrorCategory.NOT_JSON, None, "not JSON"),
    (b'{"a": Infinity}', ErrorCategory.NOT_JSON, None, "not JSON"),
    (b"x" * (MAX_MESSAGE_BYTES + 1), ErrorCategory.TOO_LARGE, None, "over the limit"),
    (with_(merchant_id=...), ErrorCategory.SCHEMA, "merchant_id", "merchant_id is required"),
    (with_(amount_minor=12.5), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(amount_minor=12.0), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(amount_minor=-1), ErrorCategory.SCHEMA, "amount_minor", "amount_minor"),
    (with_(amount_minor=10**12 + 1), ErrorCategory.SCHEMA, "amount_minor", "amount_minor"),
    (with_(amount_minor="12"), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(amount_minor=True), ErrorCategory.SCHEMA, "amount_minor", "integer"),
    (with_(channel="Pos"), ErrorCategory.SCHEMA, "channel", "channel"),
    (with_(status="ok"), ErrorCategory.SCHEMA, "status", "status"),
    (with_(currency="eur"), ErrorCategory.SCHEMA, "currency", "currency"),
    (with_(country="DEU"), ErrorCategory.SCHEMA, "country", "country"),
    (with_(status="declined"), ErrorCategory.SCHEMA, "decline_code", "declined"),
    (with_(event_time="2026-11-22 10:15:30"), ErrorCategory.SCHEMA, "event_time", "event_time"),
    (with_(event_time="2026-11-22T10:15:30+01:00"), ErrorCategory.SCHEMA, "event_time",
     "event_time"),
    (with_(event_time="2026-02-30T10:15:30Z"), ErrorCategory.SCHEMA, "event_time",
     "not a valid date"),
    (with_(transaction_id="has space"), ErrorCategory.SCHEMA, "transaction_id",
     "transaction_id"),
    (with_(transaction_id="x" * 65), ErrorCategory.SCHEMA, "transaction_id", "transaction_id"),
    (with_(schema_version="2"), ErrorCategory.SCHEMA, "schema_version", "schema_version"),
    (with_(processing_ms=600_001), ErrorCategory.SCHEMA, "processing_ms", "processing_ms"),
    (with_(risk_score=1.5), ErrorCategory.SCHEMA, "risk_score", "risk_score"),
    (with_(card_bin="12345"), ErrorCategory.SCHEMA, "card_bin", "card_bin"),
    (with_(unknown_field=1), ErrorCategory.SCHEMA, "unknown_field", "unknown field"),
    (with_(metadata={str(i): "v" for i in range(33)}), ErrorCategory.SCHEMA, "metadata",
     "metadata"),
    (with_(metadata={"k": "v" * 257}), ErrorCategory.SCHEMA, "metadata.k", "metadata"),
    (with_(merchant_id="m\x001"), ErrorCategory.SCHEMA, "merchant_id", "NUL character"),
    (with_(metadata={"k": "a\x00"}), ErrorCategory.SCHEMA, "metadata.k", "NUL character"),
]


@pytest.mark.parametrize(("raw", "category", "field", "words"), BAD,
                         ids=[f"{i}-{c.value}" for i, (_, c, _, _) in enumerate(BAD)])
def test_bad_inputs_are_classified_and_explained(raw, category, field, words):
    result = parse_payment(raw)
    assert isinstance(result, ParseFailure)
    assert result.category is category
    assert result.field == field
    assert words in result.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(raw):
    result = parse_payment(raw)
    assert isinstance(result, Payment | ParseFailure)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(sorted(VALID)), st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=80),
    st.lists(st.integers(), max_size=3)))
def test_one_mutated_field_is_accepted_or_names_that_field(name, value):
    result = parse_payment(with_(**{name: value}))
    if isinstance(result, ParseFailure):
        assert result.category is ErrorCategory.SCHEMA
        assert result.field == name
        assert name in result.message
