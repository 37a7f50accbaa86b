"""Fuzzing decode -> validate -> encode: whatever a producer sends, every output encodes.

For hypothesis-made values, headers and record timestamps, the validator never raises,
and whatever it decides can be written everywhere it goes: an accepted payment's COPY
row, a failed message's ``failed_items`` row and its dead-letter record (under the
broker's limit, as JSON).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.events import ErrorCategory, FailedMessage
from pipeline.parse import Validator
from pipeline.records import (
    DEAD_LETTER_MAX_BYTES,
    INT4_MAX,
    INT8_MAX,
    RECORD_TIME_MAX_AGE_S,
    RECORD_TIME_MAX_AHEAD_S,
    bounded_int,
    dead_letter_value,
    record_time,
)
from pipeline.rules import build_rules
from pipeline.schema import load_schema
from storage.postgres import _failed_row, _transaction_row

VALIDATOR = Validator(load_schema(Path("config/schemas/transaction-v1.json")),
                      build_rules([{"rule": "required", "field": "decline_code",
                                    "when": {"status": "declined"}},
                                   {"rule": "event_time_skew", "max_future_seconds": 120,
                                    "max_past_seconds": 365 * 86400}]))
NOW = 1_764_756_000.0

# every code point, lone surrogates included (what a "\ud800" escape decodes to)
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=70)
NUMBERS = st.one_of(st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(allow_nan=False, allow_infinity=False), st.booleans(), st.none())
JSONISH = st.recursive(st.one_of(NUMBERS, ANY_TEXT),
                       lambda inner: st.one_of(st.lists(inner, max_size=4),
                                               st.dictionaries(ANY_TEXT, inner, max_size=4)),
                       max_leaves=12)
FIELDS = ["schema_version", "transaction_id", "event_time", "merchant_id", "customer_id",
          "amount_minor", "currency", "channel", "payment_method", "status", "country",
          "processing_ms", "decline_code", "card_bin", "risk_score", "metadata"]


def _payment() -> dict:
    return {"schema_version": "1", "transaction_id": "t1",
            "event_time": "2025-12-03T09:59:00Z", "merchant_id": "m1", "customer_id": "c1",
            "amount_minor": 1200, "currency": "EUR", "channel": "pos",
            "payment_method": "card", "status": "approved", "country": "DE",
            "processing_ms": 40}


@st.composite
def messages(draw) -> bytes:
    """A valid payment with a few fields (or keys) replaced by anything, or raw bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    body = _payment()
    for _ in range(draw(st.integers(0, 3))):
        body[draw(st.sampled_from(FIELDS) | ANY_TEXT)] = draw(JSONISH)
    # ensure_ascii: a lone surrogate becomes the "\ud800" escape an attacker would send
    text = json.dumps(body, ensure_ascii=draw(st.booleans()))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, ensure_ascii=True).encode("ascii")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=messages(),
       stamp=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True),
                       st.integers(-(2**63), 2**63 - 1).map(lambda ms: ms / 1000.0)),
       retry=st.binary(max_size=25), replay=st.binary(max_size=25))
def test_any_record_gets_a_verdict_whose_outputs_encode(raw, stamp, retry, replay):
    received = record_time(stamp, NOW)
    assert NOW - RECORD_TIME_MAX_AGE_S <= received <= NOW + RECORD_TIME_MAX_AHEAD_S
    result = VALIDATOR.parse(raw, received)  # never raises
    if result.ok:
        assert result.transaction is not None
        row = _transaction_row(result.transaction, "payments", 0, 1)
        row.encode("utf-8")
        assert "\x00" not in row and row.count("\n") == 1
        return
    assert result.category in set(ErrorCategory) and result.errors
    item = FailedMessage(raw, result.category, result.errors, "payments", 0, 1,
                         datetime.fromtimestamp(received, UTC),
                         retry_count=bounded_int(retry, 0, INT4_MAX) or 0,
                         replay_of=bounded_int(replay, 1, INT8_MAX), key=raw[:10])
    row = _failed_row(item)
    for text in (row[2], row[7], row[8]):
        if text is not None:
            text.encode("utf-8")
            assert "\x00" not in text and "\\u0000" not in text
    assert 0 <= row[6] <= INT4_MAX and (row[10] is None or 1 <= row[10] <= INT8_MAX)
    value = dead_letter_value(item.to_dict(payload=False), raw)
    assert len(value) <= DEAD_LETTER_MAX_BYTES
    assert json.loads(value)["error_category"] == result.category.value
