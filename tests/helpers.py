"""Independent expectations computed from generated events (no pipeline code)."""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import UTC, datetime

import psycopg2

from devtools.services import libpq_dsn
from simulator.generator import SimEvent

VALID = {"valid"}


def expected_windows(events: list[SimEvent], size: int) -> dict[tuple[datetime, str], Counter]:
    """Per (window start, channel): counts of payments and of each status, amount sum."""
    out: dict[tuple[datetime, str], Counter] = defaultdict(Counter)
    for e in events:
        if e.kind not in VALID:
            continue
        p = e.payload
        assert p is not None
        t = datetime.strptime(p["event_time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        epoch = int(t.timestamp())
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
