"""Event-time tumbling windows with replay-safe counts.

A window value carries ``last_offset``: the highest source offset (of its
partition) already counted in it. Offsets of one partition are processed in
order, so an event at or below that watermark was counted before (a replay
after a crash) and is skipped. That makes table state, and the absolute
values upserted from it, converge to the same numbers however often a batch
is redelivered.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from models.events import ParsedTransaction

WINDOW_SIZES = (300, 3600)
STATUSES = ("approved", "declined", "failed", "pending", "reversed")


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


Entry = tuple[int, str, int]  # (offset, status, amount_minor)


def group_by_window(
    events: Iterable[tuple[int, ParsedTransaction]], size: int
) -> dict[tuple[int, str], list[Entry]]:
    """Group (offset, payment) pairs by (window start, channel), offsets ascending."""
    groups: dict[tuple[int, str], list[Entry]] = defaultdict(list)
    for offset, payment in events:
        key = (window_start(payment.event_time.timestamp(), size), payment.channel)
        groups[key].append((offset, payment.status, payment.amount_minor))
    return groups


def apply_entries(current: WindowCounts, entries: list[Entry]) -> int:
    """Count ``entries`` into ``current`` (in place); returns how many were new."""
    return sum(current.add(offset, status, amount) for offset, status, amount in entries)
