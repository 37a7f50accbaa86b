"""Mergeable histograms: the aggregate every windowed metric is kept as.

A :class:`Histogram` holds bucket counts for fixed upper bounds (plus one
overflow bucket), and the exact count, sum, min and max. Two histograms with
the same bounds merge by adding counts and sums and taking the min of mins
and the max of maxes, so merging is associative and commutative: per-batch
deltas, replays and window sizes agree (an hourly window is the merge of its
twelve 5-minute windows). Quantiles are estimated from the buckets by linear
interpolation inside the bucket that holds the rank, clamped to [min, max].

A metric with no bounds (a counter or a rate) is a histogram with only the
overflow bucket: its aggregate is count, sum, min and max (a rate's value is
``sum / count``).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any


class Histogram:
    """Bucket counts for ``bounds`` (upper bounds, inclusive) and exact count/sum/min/max."""

    __slots__ = ("bounds", "counts", "count", "sum", "min", "max")

    def __init__(self, bounds: Sequence[float] = ()) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last bucket is (bounds[-1], +inf)
        self.count = 0
        self.sum: float = 0  # stays an exact int while every value is an int
        self.min: float | None = None
        self.max: float | None = None

    @classmethod
    def of(cls, bounds: tuple[float, ...], counts: list[int], count: int, total: float,
           lo: float, hi: float) -> Histogram:
        """A histogram with these values (``bounds`` already a tuple): the columnar
        path's constructor, which makes a few hundred per batch."""
        h = cls.__new__(cls)
        h.bounds, h.counts, h.count, h.sum, h.min, h.max = bounds, counts, count, total, lo, hi
        return h

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value
        if self.min is None or value < self.min:
            self.min = value
        if self.max is None or value > self.max:
            self.max = value

    def observe_many(self, values: Sequence[float]) -> None:
        """``observe`` each value (the same result, in bulk)."""
        if not values:
            return
        counts, bounds = self.counts, self.bounds
        if bounds:
            for v in values:
                counts[bisect_left(bounds, v)] += 1
        else:
            counts[0] += len(values)
        self.count += len(values)
        self.sum += sum(values)
        lo, hi = min(values), max(values)
        if self.min is None or lo < self.min:
            self.min = lo
        if self.max is None or hi > self.max:
            self.max = hi

    def merge(self, other: Histogram) -> None:
        """Add ``other`` into this histogram (same bounds)."""
        if other.bounds != self.bounds:
            raise ValueError(f"cannot merge histograms with bounds {self.bounds} "
                             f"and {other.bounds}")
        counts = self.counts
        for i, n in enumerate(other.counts):
            counts[i] += n
        self.count += other.count
        self.sum += other.sum
        if other.min is not None and (self.min is None or other.min < self.min):
            self.min = other.min
        if other.max is not None and (self.max is None or other.max > self.max):
            self.max = other.max

    def copy(self) -> Histogram:
        h = Histogram.__new__(Histogram)
        h.bounds, h.counts, h.count = self.bounds, list(self.counts), self.count
        h.sum, h.min, h.max = self.sum, self.min, self.max
        return h

    def quantile(self, q: float) -> float | None:
        """Estimate of the ``q`` quantile (0..1) from the buckets; None when empty."""
        if not self.count or self.min is None or self.max is None:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                lo = self.min if i == 0 else max(self.min, self.bounds[i - 1])
                hi = self.max if i == len(self.bounds) else min(self.max, self.bounds[i])
                fraction = (rank - seen) / n
                return lo + (hi - lo) * fraction
            seen += n
        return self.max

    @property
    def mean(self) -> float | None:
        return self.sum / self.count if self.count else None

    def to_list(self) -> list[Any]:
        """Compact JSON form for table values: ``[counts, count, sum, min, max]``."""
        return [self.counts, self.count, self.sum, self.min, self.max]

    @classmethod
    def from_list(cls, bounds: Sequence[float], data: Sequence[Any]) -> Histogram:
        h = cls(bounds)
        counts, h.count, h.sum, h.min, h.max = data
        if len(counts) != len(h.counts):
            raise ValueError(f"{len(counts)} bucket counts for {len(h.bounds)} bounds")
        h.counts = list(counts)
        return h

    def to_dict(self) -> dict[str, Any]:
        """Readable form (web UI, JSON exports)."""
        return {
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "p50": self.quantile(0.50),
            "p95": self.quantile(0.95),
            "p99": self.quantile(0.99),
            "buckets": self.bucket_dict(),
        }

    def bucket_dict(self) -> dict[str, int]:
        """Counts keyed by upper bound (``"+Inf"`` for the overflow bucket), as in Prometheus."""
        labels = [_label(b) for b in self.bounds] + ["+Inf"]
        return dict(zip(labels, self.counts, strict=True))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Histogram):
            return NotImplemented
        return self.to_list() == other.to_list() and self.bounds == other.bounds

    def __repr__(self) -> str:
        return f"Histogram(count={self.count}, sum={self.sum}, min={self.min}, max={self.max})"


def _label(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def check_bounds(bounds: Sequence[Any]) -> tuple[float, ...]:
    """Validate bucket bounds: numbers, strictly increasing (no overlapping buckets)."""
    out: list[float] = []
    for i, b in enumerate(bounds):
        if isinstance(b, bool) or not isinstance(b, int | float):
            raise ValueError(f"bucket bound #{i} is {b!r}, not a number")
        if out and b <= out[-1]:
            raise ValueError(f"bucket bounds must increase strictly: {out[-1]!r} then {b!r} "
                             f"(buckets would overlap)")
        out.append(float(b))
    return tuple(out)
