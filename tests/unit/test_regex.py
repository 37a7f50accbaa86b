"""A contract pattern matched over a whole batch at once (``pipeline.regex.batched``)
gives each value the verdict a search of that value alone gives; the validator's use of
it is held to the authoritative path in test_parse_many and test_schema."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.regex import SEPARATOR, batched, trusted_patterns

CONTRACT = sorted(trusted_patterns())


def one_by_one(pattern: str) -> re.Pattern[str]:
    """The pattern as the decoder applied it to one value (JSON Schema's ``$``: the end)."""
    return re.compile(pattern[:-1] + r"\Z")


def near(pattern: str) -> st.SearchStrategy[str]:
    """Values that match, values just beside a match, and anything at all."""
    matching = st.from_regex(one_by_one(pattern))
    return st.one_of(
        matching,
        matching.map(lambda v: v + "\n"), matching.map(lambda v: v[:-1]),
        matching.map(lambda v: v + v[-1:]), matching.map(lambda v: "\u0661" + v[1:]),
        st.text(max_size=30), st.sampled_from(["", "\x1f", "a\x1fb"]))


def test_every_contract_pattern_is_batched():
    assert CONTRACT
    assert all(batched(p) is not None for p in CONTRACT)


@pytest.mark.parametrize("pattern", CONTRACT)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_batch_matches_when_each_value_does(pattern, data):
    values = data.draw(st.lists(near(pattern), max_size=12))
    whole, one = batched(pattern), one_by_one(pattern)
    assert whole is not None
    if any(SEPARATOR in v for v in values):
        return  # the caller counts the separators first, and searches each value then
    joined = "".join(v + SEPARATOR for v in values)
    # from any value's start, the match ends where the first value from there that does
    # not match starts, or at the end
    for start in range(len(values) + 1):
        at = len("".join(v + SEPARATOR for v in values[:start]))
        first = next((k for k in range(start, len(values)) if not one.search(values[k])),
                     len(values))
        assert whole.match(joined, at).end() == len("".join(
            v + SEPARATOR for v in values[:first]))


@pytest.mark.parametrize("pattern", [
    "^a|b$",  # an alternative outside a group: not anchored at both ends
    "a$", "^a", "^a\\$",  # not anchored
    "^.{3}$", "^[^a]+$", "^\\s+$", "^\\W$", "^\\x1f$", "^[\\x00-z]$",  # could match it
    "^a(?=b)b$", "^(?i)a$", "^(?P<x>a)(?P=x)$", "^a\u00e9$",  # lookaround, flags, non-ASCII
    "^(a$", "^[a$", "^a)$",  # unbalanced
])
def test_a_pattern_that_could_match_the_separator_is_not_batched(pattern):
    assert batched(pattern) is None
