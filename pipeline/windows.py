"""Event-time tumbling windows with replay-safe counts.

A window value carries ``last_offset``: the highest source offset (of its
partition) already counted in it. Offsets of one partition are processed in
order, so an event at or below that watermark was counted before (a replay
after a crash) and is skipped. That makes table state, and the absolute
values upserted from it, converge to the same numbers however often a batch
is redelivered.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, cast

import numpy as np
import orjson

from models.events import STATUSES, ParsedTransaction
from pipeline.columns import PaymentColumns
from pipeline.histogram import Histogram
from pipeline.metrics import EXACT_FLOAT_INT, BatchMetrics, MetricInfo

Bounds = Callable[[str], tuple[float, ...]]  # a windowed metric's bucket bounds, by name


def window_start(ts: float, size: int) -> int:
    """Start (POSIX seconds, UTC-aligned) of the tumbling window holding ``ts``."""
    return int(ts // size) * size


@dataclass(slots=True)
class WindowCounts:
    """Counts of accepted payments in one (window, channel, source partition)."""

    tx_count: int = 0
    amount_minor_sum: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    last_offset: int = -1

    def add(self, offset: int, status: str, amount_minor: int) -> bool:
        """Count one event unless it is at or below the watermark; True if counted."""
        if offset <= self.last_offset:
            return False
        self.tx_count += 1
        self.amount_minor_sum += amount_minor
        self.by_status[status] = self.by_status.get(status, 0) + 1
        self.last_offset = offset
        return True

    def copy(self) -> WindowCounts:
        return WindowCounts(self.tx_count, self.amount_minor_sum, dict(self.by_status),
                            self.last_offset)

    def merge(self, other: WindowCounts) -> None:
        """Add another partition's counts of the same window and channel (readers)."""
        self.tx_count += other.tx_count
        self.amount_minor_sum += other.amount_minor_sum
        for status, n in other.by_status.items():
            self.by_status[status] = self.by_status.get(status, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "tx_count": self.tx_count,
            "amount_minor_sum": self.amount_minor_sum,
            "by_status": dict(self.by_status),
            "last_offset": self.last_offset,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> WindowCounts:
        if not data:
            return cls()
        return cls(
            data["tx_count"], data["amount_minor_sum"], dict(data["by_status"]), data["last_offset"]
        )


@dataclass(slots=True, frozen=True)
class WindowRow:
    """Absolute counts of one (window, channel, partition) after a batch."""

    window_seconds: int
    window_start: int
    channel: str
    partition: int
    counts: WindowCounts


Entry = tuple[int, str, int]  # (offset, status, amount_minor)


def group_by_window(
    events: Iterable[tuple[int, ParsedTransaction]], size: int
) -> dict[tuple[int, str], list[Entry]]:
    """Group (offset, payment) pairs by (window start, channel), offsets ascending."""
    groups: dict[tuple[int, str], list[Entry]] = defaultdict(list)
    for offset, payment in events:
        key = (window_start(payment.event_ts, size), payment.channel)
        groups[key].append((offset, payment.status, payment.amount_minor))
    return groups


def apply_entries(current: WindowCounts, entries: list[Entry]) -> int:
    """Count ``entries`` into ``current`` (in place); returns how many were new."""
    return sum(current.add(offset, status, amount) for offset, status, amount in entries)


# -- late events and windowed metrics -------------------------------------------------------

LATE_EVENTS = "late_events"  # the windowed counter of events left out as too late


def is_late(event_ts: float, stream_time: float, size: int, grace: float) -> bool:
    """True if the ``size`` window holding ``event_ts`` closed for good: its end plus
    ``grace`` is at or before the stream time (Kafka Streams' rule)."""
    return window_start(event_ts, size) + size + grace <= stream_time


def split_late(clock: StreamClock, payments: Mapping[int, ParsedTransaction], finest: int,
               grace: float, received: Mapping[int, float] | None = None,
               ) -> tuple[list[tuple[int, ParsedTransaction]], set[int]]:
    """Split a batch (offset -> payment, in offset order) into on-time payments and the
    offsets of late ones, advancing ``clock`` past each payment it had not counted.

    A payment moves the clock to its event time, but never past its record time
    (``received``, offset -> POSIX seconds): an event dated ahead of when it was sent
    (within what the event-time rule allows) must not make the on-time payments that
    follow it late. One event from the future used to silence a partition for good.
    """
    on_time: list[tuple[int, ParsedTransaction]] = []
    late: set[int] = set()
    for offset, tx in payments.items():
        ts = tx.event_ts
        if is_late(ts, clock.stream_time, finest, grace):
            late.add(offset)
        else:
            on_time.append((offset, tx))
        if offset > clock.last_offset:
            clock.last_offset = offset
            if received is not None:
                ts = min(ts, received.get(offset, ts))
            if ts > clock.stream_time:
                clock.stream_time = ts
    return on_time, late


@dataclass(slots=True)
class StreamClock:
    """Stream time of one source partition: the newest event time counted so far.

    ``checkpoints`` are ``(first offset of a batch, stream time before it)`` for the
    batches not yet committed. A clock is stored with the window tables but may
    reach the store (RocksDB, the changelog) without every window of the same flush,
    when the worker dies in between; a replay from the committed offset then rewinds
    the clock to the checkpoint of its first offset, so each replayed payment is
    judged late or on time exactly as it was the first time.
    """

    stream_time: float = float("-inf")
    last_offset: int = -1
    checkpoints: list[tuple[int, float]] = field(default_factory=list)

    def begin_batch(self, first_offset: int, committed: int) -> None:
        """Call before judging a batch whose first message has ``first_offset``, with
        the partition's committed offset."""
        if first_offset <= self.last_offset:  # a replay of offsets this clock counted
            before = [t for offset, t in self.checkpoints if offset == first_offset]
            if before:
                self.stream_time, self.last_offset = before[-1], first_offset - 1
                self.checkpoints = [c for c in self.checkpoints if c[0] < first_offset]
        if self.checkpoints and self.checkpoints[0][0] < committed:  # once a commit
            self.checkpoints = [c for c in self.checkpoints if c[0] >= committed]
        self.checkpoints.append((first_offset, self.stream_time))

    def to_dict(self) -> dict[str, Any]:
        return {"stream_time": self.stream_time if self.last_offset >= 0 else None,
                "last_offset": self.last_offset,
                "checkpoints": [[o, t if t != float("-inf") else None]
                                for o, t in self.checkpoints]}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> StreamClock:
        if not data or data.get("stream_time") is None:
            return cls()
        checkpoints = [(int(o), float("-inf") if t is None else float(t))
                       for o, t in data.get("checkpoints") or []]
        return cls(float(data["stream_time"]), int(data["last_offset"]), checkpoints)


# A window value's JSON stays under this (1 MiB is the broker's record limit).
WINDOW_VALUE_MAX_BYTES = 600_000
OVERFLOW_DIMENSION = "overflow=true"  # where dimensions past that bound are counted


def _stored_bytes(key: str, h: Histogram) -> int:
    """An upper bound of the JSON bytes of one histogram in a stored value: its key,
    and each bucket count, count, sum, min and max (at most 24 characters each)."""
    return 6 * len(key) + 24 * (len(h.counts) + 4) + 8


class WindowMetrics:
    """Windowed metrics of one (window, source partition): a histogram per
    ``"<metric>|<dimension>"``, with the watermark that keeps replays from counting twice."""

    __slots__ = ("hists", "last_offset", "size")

    def __init__(self, hists: dict[str, Histogram] | None = None, last_offset: int = -1) -> None:
        self.hists = hists if hists is not None else {}
        self.last_offset = last_offset
        self.size = sum(_stored_bytes(key, h) for key, h in self.hists.items())

    def merge(self, delta: dict[str, Histogram]) -> None:
        """Add ``delta``'s histograms. A new dimension that would take the stored value
        past :data:`WINDOW_VALUE_MAX_BYTES` is counted in its metric's
        :data:`OVERFLOW_DIMENSION` instead, so no value (a changelog record) can outgrow
        the broker's 1 MiB limit, whatever the data or the windowed dimensions."""
        hists = self.hists
        for key, h in delta.items():
            mine = hists.get(key)
            if mine is None:
                cost = _stored_bytes(key, h)
                if self.size + cost > WINDOW_VALUE_MAX_BYTES:
                    key = f"{key.split('|', 1)[0]}|{OVERFLOW_DIMENSION}"
                    mine = hists.get(key)
                    cost = _stored_bytes(key, h)
            if mine is None:
                hists[key] = h.copy()
                self.size += cost
            else:
                mine.merge(h)

    def to_dict(self) -> dict[str, Any]:
        """Stored form; ``"b"`` holds each bucketed metric's bounds, so a value decodes
        without the configuration that defined it (a later version may drop the metric)."""
        bounds: dict[str, list[float]] = {}
        for key, h in self.hists.items():
            if h.bounds:
                bounds.setdefault(key.split("|", 1)[0], list(h.bounds))
        return {"last_offset": self.last_offset, "b": bounds,
                "m": {key: h.to_list() for key, h in self.hists.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, bounds: Bounds) -> WindowMetrics:
        """Decode a stored value; ``bounds`` only serves values stored before they carried
        their own (and metrics with no buckets)."""
        if not data:
            return cls()
        stored: dict[str, list[float]] = data.get("b") or {}
        hists = {}
        for key, value in data["m"].items():
            name = key.split("|", 1)[0]
            own = stored.get(name)
            hists[key] = Histogram.from_list(bounds(name) if own is None else own, value)
        return cls(hists, int(data["last_offset"]))


class WindowedValues(Protocol):
    def add_windowed(self, grouped: dict[str, list[float]]) -> None: ...


class LateEvent:
    """Stands for a late payment's metrics: it only counts in ``late_events``."""

    key = f"{LATE_EVENTS}|"

    def add_windowed(self, grouped: dict[str, list[float]]) -> None:
        grouped[self.key].append(1)


LATE = LateEvent()
FAILED_EVENTS = "failed"  # the windowed counter of failed messages, by category


class FailedEvent:
    """Stands for a failed message: it counts in ``failed|category=<category>``, in the
    window of its broker timestamp (a failed message may have no event time)."""

    __slots__ = ("key",)

    def __init__(self, category: str) -> None:
        self.key = f"{FAILED_EVENTS}|category={category}"

    def add_windowed(self, grouped: dict[str, list[float]]) -> None:
        grouped[self.key].append(1)


_FAILED: dict[str, FailedEvent] = {}


def failed_event(category: str) -> FailedEvent:
    """The (shared) entry value of a failed message of ``category``."""
    entry = _FAILED.get(category)
    if entry is None:
        entry = _FAILED[category] = FailedEvent(category)
    return entry


MetricEntry = tuple[int, WindowedValues]  # (offset, its windowed metrics)


Delta = tuple[dict[str, Histogram], int]  # (histograms by key, the last offset in them)


def observe(entries: Iterable[MetricEntry], bounds: Bounds, after: int = -1) -> Delta:
    """Histograms of the entries with offsets above ``after``; and the last offset.

    Values are grouped per key first and added in bulk (:meth:`Histogram.observe_many`).
    """
    grouped: defaultdict[str, list[float]] = defaultdict(list)
    last = after
    for offset, values in entries:
        if offset <= after:
            continue
        last = offset
        values.add_windowed(grouped)
    delta: dict[str, Histogram] = {}
    for key, vs in grouped.items():
        h = delta[key] = Histogram(bounds(key.split("|", 1)[0]))
        h.observe_many(vs)
    return delta, last


def merge_unseen(value: WindowMetrics, groups: Iterable[tuple[list[MetricEntry], Delta]],
                 bounds: Bounds) -> None:
    """Merge each group's precomputed delta into ``value``; a group that starts at or
    below the value's watermark is a replay, and only its unseen entries are counted."""
    last = value.last_offset
    for group, (delta, newest) in groups:
        if group[0][0] <= last:
            delta, newest = observe(group, bounds, after=last)
        value.merge(delta)
        value.last_offset = max(value.last_offset, newest)


# -- rows for PostgreSQL ---------------------------------------------------------------------

# (window seconds, window start, metric, dimension, partition, counts JSON, count, sum,
#  min, max, last offset): one histogram of one window value, snapshotted on the loop
PartialRow = tuple[int, datetime, str, str, int, str, int, float, Any, Any, int]


@dataclass(slots=True)
class HistogramPartials:
    """The rows of flushed window values (``histogram_partials``) and the bucket bounds
    of their metrics, which the sink needs to merge them with other partitions' rows."""

    rows: list[PartialRow] = field(default_factory=list)
    bounds: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def add(self, size: int, window_start: int, partition: int, value: WindowMetrics) -> None:
        """Snapshot ``value`` (call on the event loop: the value keeps changing after)."""
        start = datetime.fromtimestamp(window_start, UTC)
        for key, h in value.hists.items():
            metric, dim = key.split("|", 1)
            self.bounds.setdefault(metric, h.bounds)
            self.rows.append((size, start, metric, dim, partition,
                              orjson.dumps(h.counts).decode(), h.count, h.sum, h.min, h.max,
                              value.last_offset))

    def __len__(self) -> int:
        return len(self.rows)


# -- the columnar path: a whole batch at once ---------------------------------------------


def window_starts(ts: np.ndarray, size: int) -> np.ndarray:
    """:func:`window_start` of every value of ``ts`` (float64 seconds), as int64."""
    return (np.floor_divide(ts, size) * size).astype(np.int64)


def late_mask(clock: StreamClock, cols: PaymentColumns, finest: int, grace: float,
              received: np.ndarray | None = None) -> np.ndarray:
    """:func:`split_late` for a whole batch: which payments are late, the clock advanced
    past the batch. The stream time before each payment is the running maximum of the
    earlier payments' event times (each capped at its record time, ``received``) that
    the clock had not counted; a payment is late when its window closed before it."""
    ts = cols.event_ts
    new = cols.offsets > clock.last_offset
    capped = ts if received is None else np.minimum(ts, received)
    moves = np.where(new, capped, -np.inf)
    running = np.maximum.accumulate(np.concatenate(([clock.stream_time], moves)))
    late = window_starts(ts, finest) + finest + grace <= running[:-1]
    if new.any():
        clock.last_offset = int(cols.offsets[new][-1])
        clock.stream_time = float(running[-1])
    return late


def count_groups(cols: PaymentColumns, mask: np.ndarray, size: int,
                 ) -> list[tuple[int, str, np.ndarray]]:
    """``(window start, channel, positions)`` of the payments in ``mask``, grouped by
    ``size`` window and channel as :func:`group_by_window` does (positions ascending)."""
    positions = np.flatnonzero(mask)
    if not len(positions):
        return []
    codes, channels = cols.codes("channel")
    starts = window_starts(cols.event_ts[positions], size)
    order = np.lexsort((codes[positions], starts))  # stable: offsets ascend in a group
    starts, chans, positions = starts[order], codes[positions][order], positions[order]
    cut = np.flatnonzero((np.diff(starts) != 0) | (np.diff(chans) != 0)) + 1
    bounds = [0, *cut.tolist(), len(positions)]
    groups = [(int(starts[a]), channels[chans[a]], positions[a:b])
              for a, b in zip(bounds, bounds[1:], strict=False)]
    # group_by_window's order: by first appearance in the batch
    groups.sort(key=lambda g: g[2][0])
    return groups


def apply_columns(current: WindowCounts, cols: PaymentColumns, positions: np.ndarray) -> int:
    """:func:`apply_entries` for the payments at ``positions`` (ascending offsets): the
    ones above the watermark are counted; returns how many."""
    offsets = cols.offsets[positions]
    positions = positions[offsets > current.last_offset]
    if not len(positions):
        return 0
    current.tx_count += len(positions)
    current.amount_minor_sum += sum(cols.amount_minor[positions].tolist())
    by_status = current.by_status
    # a Counter keeps its keys in order of first arrival, so new statuses join in that
    # order; a group holds a few payments at 5,000/s, where np.unique's fixed cost was
    # most of this function's
    for code, count in Counter(cols.status[positions].tolist()).items():
        status = STATUSES[code]
        by_status[status] = by_status.get(status, 0) + count
    current.last_offset = int(cols.offsets[positions[-1]])
    return len(positions)


FailedEntry = tuple[int, int, str]  # (offset, finest window start, category)
_INTS, _FLOATS, _OBJECTS = range(3)  # how a metric's group values are added up
_ZEROS = np.zeros(0, np.int64)  # "none": replaced by zeros of the right length
_NUMBERS = (np.dtype(np.int64), np.dtype(np.float64))  # values the matrix path adds up


class WindowedBatch:
    """A batch's windowed metrics, grouped by finest window: what :func:`observe` makes
    of the batch's entries, computed per metric over whole columns.

    ``late`` marks the payments counted only in ``late_events``; ``failed`` are the
    failed messages (each counted in ``failed|category=``). Each window's delta has
    its keys in the order :func:`observe` gives them (by the first entry holding each).
    """

    def __init__(self, metrics: BatchMetrics, finest: int, late: np.ndarray,
                 failed: Sequence[FailedEntry], bounds: Bounds) -> None:
        self.metrics = metrics
        self.cols = metrics.cols
        self.starts = window_starts(self.cols.event_ts, finest)
        self.late = late
        self.failed = list(failed)
        self.bounds = bounds
        # each window's first and last entry (payments ascend in offset; failed ones join)
        starts, offsets = self.starts, self.cols.offsets
        windows, first, index = np.unique(starts, return_index=True, return_inverse=True)
        self.windows = windows  # the batch's finest windows ...
        self.window_of = index.reshape(-1)  # ... and each payment's index among them
        last = len(starts) - 1 - np.unique(starts[::-1], return_index=True)[1]
        self.first: dict[int, int] = dict(zip(windows.tolist(), offsets[first].tolist(),
                                              strict=True))
        self.last: dict[int, int] = dict(zip(windows.tolist(), offsets[last].tolist(),
                                             strict=True))
        for offset, start, _ in self.failed:
            self.first[start] = min(self.first.get(start, offset), offset)
            self.last[start] = max(self.last.get(start, offset), offset)

    def deltas(self) -> dict[int, Delta]:
        """Per finest window: its histograms by key, and the last offset in them."""
        everything = np.ones(len(self.cols), np.bool_)
        found = self._compute(everything, self.failed)
        return {start: (found.get(start, {}), self.last[start]) for start in self.first}

    def delta(self, start: int, after: int) -> Delta:
        """One window's delta of the entries above ``after`` (a replay's unseen part)."""
        mask = (self.starts == start) & (self.cols.offsets > after)
        failed = [f for f in self.failed if f[1] == start and f[0] > after]
        newest = [int(o) for o in self.cols.offsets[mask][-1:]] + [f[0] for f in failed]
        return self._compute(mask, failed).get(start, {}), max([after, *newest])

    def _compute(self, mask: np.ndarray, failed: Sequence[FailedEntry],
                 ) -> dict[int, dict[str, Histogram]]:
        cols, m = self.cols, self.metrics
        on_time = mask & ~self.late
        # every (metric, windowed dimension) at once: the payments that have the metric
        parts: list[tuple[MetricInfo, np.ndarray]] = []  # (metric, mask)
        for info in m.infos:
            if m.values[info.index] is None or not info.windowed:
                continue
            present = m.present[info.index]
            parts.append((info, on_time if present is None else on_time & present))
        late = np.flatnonzero(mask & self.late)
        found: list[tuple[int, int, int, int, str, Histogram]] = []
        if parts and len(cols):
            found += self._histograms(parts)
        if len(late):  # late payments count once each, in late_events
            h = Histogram(self.bounds(LATE_EVENTS))
            for start in np.unique(self.starts[late]).tolist():
                in_window = late[self.starts[late] == start]
                part = h.copy()
                part.observe_many([1] * len(in_window))
                found.append((start, int(cols.offsets[in_window[0]]), -1, 0, LATE.key, part))
        by_key: dict[tuple[int, str], list[int]] = {}
        for offset, start, category in failed:
            by_key.setdefault((start, failed_event(category).key), []).append(offset)
        for (start, key), offsets in by_key.items():
            h = Histogram(self.bounds(FAILED_EVENTS))
            h.observe_many([1] * len(offsets))
            found.append((start, min(offsets), -1, 0, key, h))
        found.sort(key=lambda f: f[:4])
        out: dict[int, dict[str, Histogram]] = {}
        for start, _, _, _, key, h in found:
            out.setdefault(start, {})[key] = h
        return out

    def _histograms(self, parts: list[tuple[MetricInfo, np.ndarray]],
                    ) -> list[tuple[int, int, int, int, str, Histogram]]:
        """``(window start, first offset, metric index, slot, key, histogram)`` of every
        (metric, windowed dimension, window, dimension value) group of ``parts`` (each
        metric with the mask of the payments counted in it): what
        :meth:`Histogram.observe_many` makes of each group's values in offset order, in
        no particular order (each entry's first four fields place it).

        The metrics of int64 and float64 values go together
        (:meth:`_matrix_histograms`); the others (an extractor without a kernel) one
        metric at a time, sorted (:meth:`_sorted_histograms`)."""
        numbers: list[tuple[MetricInfo, np.ndarray]] = []
        others: list[tuple[MetricInfo, np.ndarray]] = []
        for part in parts:
            values = cast(np.ndarray, self.metrics.values[part[0].index])
            (numbers if values.dtype in _NUMBERS else others).append(part)
        out: list[tuple[int, int, int, int, str, Histogram]] = []
        if numbers:
            found, wide = self._matrix_histograms(numbers)
            out += found
            others += wide
        rows = [(info, r) for info, mask in others if len(r := np.flatnonzero(mask))]
        if rows:
            out += self._sorted_histograms(rows)
        return out

    def _matrix_histograms(self, parts: list[tuple[MetricInfo, np.ndarray]],
                           ) -> tuple[list[tuple[int, int, int, int, str, Histogram]],
                                      list[tuple[MetricInfo, np.ndarray]]]:
        """:meth:`_histograms` of metrics of int64 or float64 values, every (metric,
        windowed dimension) a row of one matrix of float64 values: each group, (row,
        window, dimension value), is an index into flat arrays that counts, sums, minima,
        maxima, first payments and bucket counts gather into, in offset order (a
        batch's fixed cost per metric and a sort of every row had been most of the
        windows' time). Float sums add in offset order as Python's ``sum`` does, and a
        minimum or maximum is the first of equal values as Python's ``min`` and ``max``
        keep it (-0.0 and 0.0). An integer metric whose values or sums a float64 may not
        hold exactly (beyond :data:`EXACT_FLOAT_INT`) joins ``others``."""
        m, cols = self.metrics, self.cols
        n = len(cols)
        infos = [info for info, _ in parts]
        values = np.stack([cast(np.ndarray, m.values[info.index]) for info in infos]
                          ).astype(np.float64)
        masks = np.stack([mask for _, mask in parts])
        ints = np.array([m.values[info.index].dtype == np.int64  # type: ignore[union-attr]
                         for info in infos])
        refused: list[tuple[MetricInfo, np.ndarray]] = []
        if ints.any():
            # every |value| and |sum| below EXACT_FLOAT_INT: float64 holds them exactly
            reach = np.abs(np.where(masks, values, 0.0)).max(axis=1) * masks.sum(axis=1)
            wide = ints & (reach >= EXACT_FLOAT_INT)
            if wide.any():
                refused = [part for part, w in zip(parts, wide.tolist(), strict=True) if w]
                keep = ~wide
                parts = [part for part, w in zip(parts, wide.tolist(), strict=True) if not w]
                if not parts:
                    return [], refused
                infos = [info for info, _ in parts]
                values, masks, ints = values[keep], masks[keep], ints[keep]
        windows, window_of = self.windows, self.window_of
        # the matrix's rows: (metric, slot); a row's groups are window * labels + label
        row_part, row_slot, row_dim = [], [], []
        for k, info in enumerate(infos):
            for slot, dim in enumerate(info.windowed):
                row_part.append(k)
                row_slot.append(slot)
                row_dim.append(dim)
        dims = {dim: m.windowed[dim] for dim in row_dim}
        order = {dim: k for k, dim in enumerate(dims)}
        group = np.stack([codes for codes, _ in dims.values()]) + window_of * np.array(
            [len(names) for _, names in dims.values()], np.int64)[:, None]
        labels = np.array([len(dims[dim][1]) for dim in row_dim], np.int64)
        width = len(windows) * int(labels.max())  # groups per row
        rows = len(row_dim)
        at = (group[[order[dim] for dim in row_dim]]
              + (np.arange(rows, dtype=np.int64) * width)[:, None])
        which = np.array(row_part, np.int64)
        counted = masks[which].ravel()
        index = at.ravel()[counted]
        value = values[which].ravel()[counted]
        size = rows * width
        groups = None  # the flat group of each compact index, when compacted
        if size > 4 * len(index) + 4096:  # many windows (a producer's disorder): compact
            groups, index = np.unique(index, return_inverse=True)
            index = index.reshape(-1)
            size = len(groups)
        counts = np.bincount(index, minlength=size)
        sums = np.zeros(size)
        np.add.at(sums, index, value)
        # backwards: of equal values, the first in offset order is written last
        lows, highs = np.full(size, np.inf), np.full(size, -np.inf)
        np.minimum.at(lows, index[::-1], value[::-1])
        np.maximum.at(highs, index[::-1], value[::-1])
        firsts = np.full(size, n, np.int64)
        np.minimum.at(firsts, index, np.tile(np.arange(n, dtype=np.int64), rows)[counted])
        bounds = [tuple(self.bounds(info.name)) for info in infos]
        widest = max(len(b) for b in bounds) + 1
        bucketed = [k for k, b in enumerate(bounds) if b]
        if bucketed:
            bucket = np.zeros((len(infos), n), np.int64)
            for k in bucketed:
                bucket[k] = np.searchsorted(np.asarray(bounds[k], np.float64), values[k],
                                            side="left")
            buckets = np.bincount(index * widest + bucket[which].ravel()[counted],
                                  minlength=size * widest).reshape(size, widest)
        found = np.flatnonzero(counts)
        row, slot_group = np.divmod(found if groups is None else groups[found], width)
        window, label = np.divmod(slot_group, labels[row])
        n_of = counts[found].tolist()
        sum_of, low_of, high_of = (sums[found].tolist(), lows[found].tolist(),
                                   highs[found].tolist())
        first_of = cols.offsets[firsts[found]].tolist()
        start_of = windows[window].tolist()
        bucket_of = buckets[found].tolist() if bucketed else []
        is_int = ints.tolist()
        of = Histogram.of
        out = []
        for j, (r, lab) in enumerate(zip(row.tolist(), label.tolist(), strict=True)):
            k = row_part[r]
            info, b, count = infos[k], bounds[k], n_of[j]
            total, low, high = sum_of[j], low_of[j], high_of[j]
            if is_int[k]:
                total, low, high = int(total), int(low), int(high)
            h = of(b, bucket_of[j][:len(b) + 1] if b else [count], count, total, low, high)
            out.append((start_of[j], first_of[j], info.index, row_slot[r],
                        f"{info.name}|{dims[row_dim[r]][1][lab]}", h))
        return out, refused

    def _sorted_histograms(self, parts: list[tuple[MetricInfo, np.ndarray]],
                           ) -> list[tuple[int, int, int, int, str, Histogram]]:
        """:meth:`_histograms` of ``parts`` (each metric with the rows of the payments
        counted in it), grouped by one sort of every (metric, dimension) row."""
        m, starts, offsets = self.metrics, self.starts, self.cols.offsets
        # one entry per (metric, slot): its rows, labels, and (int metrics) values and
        # (bucketed metrics) bucket indexes, gathered once per metric
        meta = []  # per (metric, slot): (index, slot, key prefix, labels, bounds, kept, kind)
        rows_l, label_l, int_l, bucket_l = [], [], [], []
        for info, rows in parts:
            values = m.values[info.index]
            assert values is not None  # noqa: S101 - parts hold metrics with values
            gathered = values[rows]
            bounds = tuple(self.bounds(info.name))
            if gathered.dtype == object or (gathered.dtype == np.int64 and int(
                    np.abs(gathered).max()) > EXACT_FLOAT_INT):
                kind, ints, buckets = _OBJECTS, _ZEROS, _ZEROS  # observe_many decides
            else:
                kind = _INTS if gathered.dtype == np.int64 else _FLOATS
                ints = gathered if kind == _INTS else _ZEROS
                buckets = (np.searchsorted(np.asarray(bounds, np.float64), gathered,
                                           side="left") if bounds else _ZEROS)
            for slot, dim in enumerate(info.windowed):
                codes, names = m.windowed[dim]
                meta.append((info.index, slot, f"{info.name}|", names, bounds,
                             len(bounds) + 1, kind))
                rows_l.append(rows)
                label_l.append(codes[rows])
                int_l.append(ints if ints is not _ZEROS else np.zeros(len(rows), np.int64))
                bucket_l.append(buckets if buckets is not _ZEROS
                                else np.zeros(len(rows), np.int64))
        rows = np.concatenate(rows_l)
        part = np.repeat(np.arange(len(meta)), [len(r) for r in rows_l])
        labels = np.concatenate(label_l)
        # group by part, window and label; stable, so offsets ascend within a group
        order = np.lexsort((labels, starts[rows], part))
        rows, part, labels = rows[order], part[order], labels[order]
        ints, buckets = np.concatenate(int_l)[order], np.concatenate(bucket_l)[order]
        win = starts[rows]
        cut = np.flatnonzero((np.diff(part) != 0) | (np.diff(win) != 0)
                             | (np.diff(labels) != 0)) + 1
        edges = np.concatenate(([0], cut, [len(rows)]))
        firsts = edges[:-1]
        seg_part = part[firsts].tolist()
        width = max(entry[5] for entry in meta)
        segment = np.repeat(np.arange(len(firsts)), np.diff(edges))
        counts = np.bincount(segment * width + buckets,
                             minlength=len(firsts) * width).reshape(-1, width).tolist()
        # integer sums, minima and maxima in bulk (exact: no int64 sum overflows here)
        sums = np.add.reduceat(ints, firsts).tolist()
        mins = np.minimum.reduceat(ints, firsts).tolist()
        maxs = np.maximum.reduceat(ints, firsts).tolist()
        win_first, label_first = win[firsts].tolist(), labels[firsts].tolist()
        offset_first = offsets[rows[firsts]].tolist()
        edge = edges.tolist()
        of = Histogram.of
        out = []
        for g, k in enumerate(seg_part):
            index, slot, prefix, names, bounds, kept, kind = meta[k]
            n = edge[g + 1] - edge[g]
            if kind == _INTS:
                h = of(bounds, counts[g][:kept] if bounds else [n], n, sums[g], mins[g],
                       maxs[g])
            else:
                values = m.values[index]
                assert values is not None  # noqa: S101
                group = values[rows[edge[g]:edge[g + 1]]].tolist()
                if kind == _FLOATS:  # Python's sum, so they add up in the same order
                    h = of(bounds, counts[g][:kept] if bounds else [n], n, sum(group),
                           min(group), max(group))
                else:
                    h = Histogram(bounds)
                    h.observe_many(group)
            out.append((win_first[g], offset_first[g], index, slot,
                        prefix + names[label_first[g]], h))
        return out
