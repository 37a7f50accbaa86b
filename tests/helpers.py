"""Independent expectations computed from generated events (no pipeline code)."""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import yaml

from devtools.services import libpq_dsn
from pipeline.config import ActiveConfig
from pipeline.parse import ParseResult
from simulator.generator import SimEvent
from storage.config_sources import compile_files

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


CONFIG = Path(__file__).resolve().parents[1] / "config" / "metrics.yaml"


def _bounds() -> dict[str, list[float]]:
    extractors = {e["extractor"]: e for e in yaml.safe_load(CONFIG.read_text())["extractors"]}
    return {"amount_minor": extractors["amount"]["buckets"],
            "processing_ms": extractors["processing_latency"]["buckets"]}


def _label(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def expected_histograms(counted: list[SimEvent], late: list[SimEvent],
                        size: int) -> dict[tuple, tuple]:
    """``aggregate_histograms`` rows for a few metrics, computed straight from the events:
    (metric, dimension, window start, size) -> (buckets, count, sum, min, max)."""
    bounds = _bounds()
    values: dict[tuple, list[float]] = defaultdict(list)

    def start_of(p: dict) -> datetime:
        epoch = int(event_ts(p))
        return datetime.fromtimestamp(epoch - epoch % size, UTC)

    for e in counted:
        p = e.payload
        start = start_of(p)
        values[("processing_ms", "", start)].append(p["processing_ms"])
        values[("processing_ms", f"channel={p['channel']}", start)].append(p["processing_ms"])
        values[("amount_minor", f"currency={p['currency']}", start)].append(p["amount_minor"])
        values[("transactions", f"channel={p['channel']}", start)].append(1)
        values[("approval", "", start)].append(1 if p["status"] == "approved" else 0)
    for e in late:
        values[("late_events", "", start_of(e.payload))].append(1)
    out = {}
    for (metric, dim, start), vs in values.items():
        b = bounds.get(metric, [])
        counts = [0] * (len(b) + 1)
        for v in vs:
            counts[next((i for i, x in enumerate(b) if v <= x), len(b))] += 1
        labels = [_label(x) for x in b] + ["+Inf"]
        out[(metric, dim, start, size)] = (dict(zip(labels, counts, strict=True)), len(vs),
                                           float(sum(vs)), float(min(vs)), float(max(vs)))
    return out


def execute(url: str, sql: str) -> None:
    """Run one SQL statement against the database at ``url`` and commit."""
    conn = psycopg2.connect(libpq_dsn(url))
    try:
        conn.cursor().execute(sql)
        conn.commit()
    finally:
        conn.close()


def query(url: str, sql: str) -> list[tuple]:
    """Rows of one SQL statement against the database at ``url``."""
    conn = psycopg2.connect(libpq_dsn(url))
    try:
        cur = conn.cursor()
        cur.execute(sql)
        return cur.fetchall()
    finally:
        conn.close()


@functools.cache
def shipped_config() -> ActiveConfig:
    """The shipped configuration, compiled the way a worker does (files, cross-checks)."""
    return compile_files()


def parse(raw: bytes | None, received_at: float | datetime | None = None) -> ParseResult:
    """Parse one message with the shipped configuration's validator."""
    return shipped_config().validator.parse(raw, received_at)
