"""Histograms merge associatively and commutatively, so windows and replays agree."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.histogram import Histogram, check_bounds

BOUNDS = (10.0, 100.0, 1000.0)
ints = st.lists(st.integers(min_value=0, max_value=5000), max_size=60)


def hist(values, bounds=BOUNDS) -> Histogram:
    h = Histogram(bounds)
    for v in values:
        h.observe(v)
    return h


def merged(*parts: Histogram) -> Histogram:
    out = Histogram(parts[0].bounds)
    for p in parts:
        out.merge(p)
    return out


@given(ints, ints, ints)
def test_merge_is_associative_and_commutative(a, b, c):
    ha, hb, hc = hist(a), hist(b), hist(c)
    assert merged(merged(ha, hb), hc) == merged(ha, merged(hb, hc))
    assert merged(ha, hb) == merged(hb, ha)


@given(ints, st.integers(min_value=0, max_value=60))
def test_merge_of_parts_equals_the_whole(values, cut):
    whole = hist(values)
    assert merged(hist(values[:cut]), hist(values[cut:])) == whole
    bulk = Histogram(BOUNDS)
    bulk.observe_many(values)
    assert bulk == whole


@given(st.lists(ints, min_size=12, max_size=12))
def test_an_hour_is_the_merge_of_its_twelve_five_minute_windows(windows):
    assert merged(*(hist(w) for w in windows)) == hist([v for w in windows for v in w])


@given(st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), max_size=40),
       st.lists(st.floats(min_value=0, max_value=1, allow_nan=False), max_size=40))
def test_float_sums_agree_up_to_rounding(a, b):
    left, right = merged(hist(a), hist(b)), merged(hist(b), hist(a))
    assert left.counts == right.counts and left.count == right.count
    assert left.sum == pytest.approx(right.sum)


def test_buckets_are_upper_bounds_inclusive_with_an_overflow_bucket():
    h = hist([10, 11, 100, 1000, 1001])
    assert h.bucket_dict() == {"10": 1, "100": 2, "1000": 1, "+Inf": 1}
    assert (h.count, h.sum, h.min, h.max) == (5, 2122, 10, 1001)


def test_quantiles_interpolate_within_a_bucket_and_stay_within_min_and_max():
    h = hist(range(1, 101), bounds=(25, 50, 75, 100))
    assert h.quantile(0.5) == pytest.approx(50, abs=1)
    assert h.quantile(0.95) == pytest.approx(95, abs=1)
    assert h.quantile(0.0) == 1 and h.quantile(1.0) == 100
    assert Histogram(BOUNDS).quantile(0.5) is None
    one = hist([42])
    assert one.quantile(0.5) == 42 and one.quantile(0.99) == 42


def test_round_trip_and_mismatched_bounds():
    h = hist([1, 50, 5000])
    assert Histogram.from_list(BOUNDS, h.to_list()) == h
    with pytest.raises(ValueError, match="cannot merge"):
        h.merge(Histogram((1.0,)))
    with pytest.raises(ValueError, match="bucket counts"):
        Histogram.from_list((1.0,), h.to_list())


@pytest.mark.parametrize("bounds, message", [
    ([10, 10], "increase strictly"),
    ([100, 10], "increase strictly"),
    (["a"], "not a number"),
    ([True], "not a number"),
])
def test_overlapping_or_bad_bounds_are_rejected(bounds, message):
    with pytest.raises(ValueError, match=message):
        check_bounds(bounds)
