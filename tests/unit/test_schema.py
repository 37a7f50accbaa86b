"""The msgspec fast path never accepts what the authoritative validator rejects."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.parse import Validator
from pipeline.schema import SchemaChecker, compile_fast
from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import VALID_PAYMENT, shipped_config

RECEIVED = datetime(2026, 11, 22, 10, 15, 31, tzinfo=UTC)
FAST = shipped_config().validator
SLOW = Validator(FAST.schema, FAST.rules, FAST.mode, fast_path=False)

values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(["1", "EUR", "eur", "DE", "pos", "card", "approved", "declined", "05",
                     "123456", "2026-11-22T10:15:30Z", "2026-11-22T10:15:30.1Z", "x\n", ""]),
    st.text(max_size=70),
    st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=300), st.integers()),
                    max_size=34),
)
FIELDS = sorted(VALID_PAYMENT) + ["decline_code", "card_bin", "risk_score", "metadata", "extra"]


def test_the_shipped_schema_has_a_fast_path():
    assert FAST.fast is not None


@pytest.mark.parametrize("keyword", [{"allOf": [{}]}, {"if": {}, "then": {}}])
def test_unsupported_keywords_fall_back_to_the_authoritative_path(keyword):
    schema = {**FAST.schema, **keyword}
    assert compile_fast(schema) is None
    validator = Validator(schema, FAST.rules)
    assert validator.fast is None
    assert validator.parse(orjson.dumps(VALID_PAYMENT), RECEIVED).ok


@settings(max_examples=1500, deadline=None)
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=6),
       st.sets(st.sampled_from(FIELDS)))
def test_fast_and_authoritative_paths_agree(changes, removed):
    obj = {**VALID_PAYMENT, **changes}
    for name in removed:
        obj.pop(name, None)
    raw = json.dumps(obj).encode()
    fast, slow = FAST.parse(raw, RECEIVED), SLOW.parse(raw, RECEIVED)
    assert fast == slow
    # what the fast path accepts (the decoder and the checks after it, the patterns
    # matched over the batch among them) the schema accepts; any rejection is allowed
    accepted, _, _ = FAST._decode_many([raw])
    if accepted:
        assert SchemaChecker(FAST.schema).first_error(obj) is None, raw


def test_realistic_traffic_gives_the_same_results_on_both_paths():
    events = PaymentGenerator(load_scenario(), seed=4, invalid_ratio=0.2).events(3000)
    for e in events:
        assert FAST.parse(e.value, RECEIVED) == SLOW.parse(e.value, RECEIVED), e.value


EDGES = {"transaction_id": "tx-1", "event_time": "2026-11-22T10:15:30Z", "currency": "EUR",
         "country": "DE", "card_bin": "123456", "decline_code": "05", "merchant_id": "m" * 64}


@pytest.mark.parametrize("name", sorted(EDGES))
@pytest.mark.parametrize("edit", [lambda s: s + "\n", lambda s: "\n" + s, lambda s: s + " ",
                                  lambda s: s + "x", lambda s: s[:-1]])
def test_string_edges_agree(name, edit):
    raw = json.dumps({**VALID_PAYMENT, name: edit(EDGES[name])}).encode()
    assert FAST.parse(raw, RECEIVED) == SLOW.parse(raw, RECEIVED)
