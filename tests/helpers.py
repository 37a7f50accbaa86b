"""Independent expectations computed from generated events (no pipeline code)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime

import psycopg2

from devtools.services import libpq_dsn
from simulator.generator import SimEvent

VALID = {"valid"}


def event_ts(payload: dict) -> float:
    t = datetime.strptime(payload["event_time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return t.timestamp()


def too_late(events: list[SimEvent], *, finest: int = 300, grace: float = 120) -> set[int]:
    """Indexes of valid events too late for the windows, ``events`` being one partition's
    messages in offset order: an event is late when its ``finest`` window ended ``grace``
    seconds or more before the newest event time of the valid events before it."""
    late: set[int] = set()
    stream = float("-inf")
    for i, e in enumerate(events):
        if e.kind not in VALID:
            continue
        ts = event_ts(e.payload)
        if ts // finest * finest + finest + grace <= stream:
            late.add(i)
        stream = max(stream, ts)
    return late


def expected_windows(events: list[SimEvent], size: int,
                     late: set[int] = frozenset()) -> dict[tuple[datetime, str], Counter]:
    """Per (window start, channel): counts of payments and of each status, amount sum,
    leaving out the events whose index is in ``late``."""
    out: dict[tuple[datetime, str], Counter] = defaultdict(Counter)
    for i, e in enumerate(events):
        if e.kind not in VALID or i in late:
            continue
        p = e.payload
        assert p is not None
        epoch = int(event_ts(p))
        start = datetime.fromtimestamp(epoch - epoch % size, UTC)
        c = out[(start, p["channel"])]
        c["tx_count"] += 1
        c[p["status"]] += 1
        c["amount_minor_sum"] += p["amount_minor"]
    return dict(out)


def query(url: str, sql: str) -> list[tuple]:
    """Rows of one SQL statement against the database at ``url``."""
    conn = psycopg2.connect(libpq_dsn(url))
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()
    finally:
        conn.close()
