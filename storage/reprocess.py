"""Recompute the compliance verdicts of a range of event time under the configuration
active now: ``faust -A app reprocess`` (ADR 0013, "Recompute after a rule change").

Every accepted payment is in ``normalized_transactions`` exactly once (the workers' claim
makes it so), so that table, not the lake, is what the rules are judged over: the same
set of payments the live judgement saw, with nothing to parse or de-duplicate again. For
each slice of the range, in one transaction:

- the per-event rules and metrics run on each payment of the slice (the worker's
  :class:`~pipeline.metrics.MetricEngine`, so the same code decides);
- velocity and structuring are judged over the customer's payments as the live sink
  judges them (:mod:`storage.customer_rules`, the same semantics), for every payment of
  the slice rather than for the ones a write reaches;
- the slice's ``compliance_flags`` become exactly those verdicts: new ones are added
  (open), those that no longer hold are removed, and those that still hold keep their
  status and review and take the new configuration's evidence and version;
- the slice's payments get their ``dynamic_metrics`` rows again under the new metrics.

A slice holds about :data:`SLICE_PAYMENTS` payments, however busy the hour.

A running worker stores payments meanwhile: the transaction takes every customer lock
(:data:`storage.customer_rules.LOCK_CUSTOMERS`' buckets, in the same order) before it
reads, so a worker's write of the same customers waits for it or is seen by it, and
whatever a worker adds after it judges under the same configuration, with the same
answer. Run again, it changes nothing: it is idempotent.

Given a :class:`~storage.window_rebuild.WindowPlan`, it then rebuilds the range's
settled windows from the same payments, late ones included (:mod:`storage.window_rebuild`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from psycopg2.extras import execute_values
from sqlalchemy import Engine

from models.errors import PaymentMonitorError
from pipeline.config import ActiveConfig
from pipeline.metrics import no_history
from storage import customer_rules
from storage.postgres import _transaction, insert_flags
from storage.window_rebuild import WindowPlan, WindowReport, payment_from_row, rebuild_windows

# at most about this many payments per transaction (more only when that many share one
# event time): the customer locks are held for a slice, so the sinks wait that long
SLICE_PAYMENTS = 20_000

LOCK_EVERY_CUSTOMER = f"""
SELECT count(pg_advisory_xact_lock({customer_rules.LOCK_CLASS}, k))
FROM (SELECT generate_series(0, {customer_rules.LOCK_BUCKETS - 1}) AS k ORDER BY 1) s
"""

COUNT_PAYMENTS = """
SELECT count(*) FROM normalized_transactions WHERE event_time >= %(since)s
  AND event_time < %(until)s
"""
# where the slice from %(since)s ends: the event time of its SLICE_PAYMENTS-th successor
NEXT_BOUNDARY = """
SELECT event_time FROM normalized_transactions
WHERE event_time >= %(since)s AND event_time < %(until)s
ORDER BY event_time OFFSET %(limit)s LIMIT 1
"""
NEXT_TIME = """
SELECT min(event_time) FROM normalized_transactions
WHERE event_time > %(since)s AND event_time < %(until)s
"""

SELECT_PAYMENTS = """
SELECT transaction_id, event_time, merchant_id, customer_id, amount_minor, currency,
       channel, payment_method, status, decline_code, country, processing_ms, card_bin,
       risk_score, metadata
FROM normalized_transactions
WHERE event_time >= %(since)s AND event_time < %(until)s
ORDER BY transaction_id
"""

SELECT_FLAGS = """
SELECT transaction_id, rule, status, config_version FROM compliance_flags
WHERE transaction_id = ANY(%(ids)s::text[])
"""

_RANGE = "p.event_time >= %(since)s AND p.event_time < %(until)s"
_COLUMNS = ("p.transaction_id, p.customer_id, p.merchant_id, p.event_time, p.amount_minor, "
            "p.currency")

# every payment of the slice judged, as storage.customer_rules judges those a write reaches
VELOCITY = f"""
WITH affected AS (
    SELECT {_COLUMNS} FROM normalized_transactions p WHERE {_RANGE}
), {customer_rules.VELOCITY_JUDGED}"""

STRUCTURING = f"""
WITH {customer_rules.BAND}, affected AS (
    SELECT {_COLUMNS} FROM normalized_transactions p
    JOIN band b ON b.currency = p.currency AND p.amount_minor >= b.low
               AND p.amount_minor < b.high
    WHERE {_RANGE}
), {customer_rules.STRUCTURING_JUDGED}"""

# still held: the new configuration's evidence and version, the review untouched
UPDATE_KEPT = """
UPDATE compliance_flags f SET evidence = k.evidence::jsonb, config_version = k.version
FROM (VALUES %s) AS k(transaction_id, rule, evidence, version)
WHERE f.transaction_id = k.transaction_id AND f.rule = k.rule
"""

DELETE_FLAGS = """
DELETE FROM compliance_flags f USING (VALUES %s) AS k(transaction_id, rule)
WHERE f.transaction_id = k.transaction_id AND f.rule = k.rule
"""

DELETE_METRICS = """
DELETE FROM dynamic_metrics
WHERE transaction_id = ANY(%(ids)s::text[]) AND metric_type IN ('metrics', 'compliance')
"""
INSERT_METRICS = """
INSERT INTO dynamic_metrics (transaction_id, metric_type, metric_data, config_version)
VALUES %s
"""
METRICS_TEMPLATE = "(%s,%s,%s::jsonb,%s)"


class ReprocessError(PaymentMonitorError, ValueError):
    """A range or configuration ``reprocess`` refuses, in words for the command line."""


@dataclass
class ReprocessReport:
    """What a run changed (or, with ``dry_run``, would change), per rule."""

    since: datetime
    until: datetime
    config_version: str
    dry_run: bool
    payments: int = 0
    added: Counter[str] = field(default_factory=Counter)
    removed: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    # flags a person had reviewed that no longer hold: (transaction_id, rule, status)
    removed_reviewed: list[tuple[str, str, str]] = field(default_factory=list)
    windows: WindowReport | None = None  # None: the windows were not rebuilt

    def to_json(self) -> dict[str, Any]:
        rules = sorted(set(self.added) | set(self.removed) | set(self.kept))
        return {
            "since": self.since.isoformat(), "until": self.until.isoformat(),
            "config_version": self.config_version, "dry_run": self.dry_run,
            "payments": self.payments,
            "rules": {r: {"added": self.added[r], "removed": self.removed[r],
                          "kept": self.kept[r]} for r in rules},
            "removed_reviewed": [{"transaction_id": t, "rule": r, "status": s}
                                 for t, r, s in self.removed_reviewed],
            "windows": None if self.windows is None else self.windows.to_json(),
        }


def check_range(since: datetime, until: datetime) -> None:
    if until <= since:
        raise ReprocessError(f"--until ({until.isoformat()}) must be after --since "
                             f"({since.isoformat()})")


def count_payments(engine: Engine, since: datetime, until: datetime) -> int:
    """The payments with an event time in ``[since, until)`` now (for a progress bar)."""
    check_range(since, until)
    with _transaction(engine) as cur:
        cur.execute(COUNT_PAYMENTS, {"since": since, "until": until})
        return int(cur.fetchone()[0])


def reprocess(engine: Engine, active: ActiveConfig, since: datetime, until: datetime, *,
              dry_run: bool = False,
              progress: Callable[[datetime, datetime, ReprocessReport], None] | None = None,
              windows: WindowPlan | None = None,
              known_bounds: Mapping[str, tuple[float, ...]] | None = None,
              window_progress: Callable[[datetime], None] | None = None,
              ) -> ReprocessReport:
    """Judge every payment with an event time in ``[since, until)`` under ``active`` and
    make its flags and metric rows those verdicts: one transaction per slice of event
    time holding about :data:`SLICE_PAYMENTS` payments, oldest first. Then, given
    ``windows``, rebuild the settled windows of the range (:mod:`storage.window_rebuild`);
    ``known_bounds`` are the bucket bounds of metrics earlier versions defined (their rows
    may still be merged)."""
    check_range(since, until)
    report = ReprocessReport(since, until, active.version, dry_run)
    start = since
    while start < until:
        with _transaction(engine) as cur:
            cur.execute(LOCK_EVERY_CUSTOMER)  # before the slice is cut: nothing moves
            end = _boundary(cur, start, until)
            _slice(cur, active, start, end, report)
            if dry_run:
                cur.connection.rollback()
        if progress is not None:
            progress(start, end, report)
        start = end
    if windows is not None:
        known = known_bounds or {}
        metric_engine = active.engine

        def bounds(name: str) -> tuple[float, ...]:
            return metric_engine.bounds(name) or tuple(known.get(name, ()))

        report.windows = rebuild_windows(lambda: _transaction(engine), metric_engine, bounds,
                                         active.version, windows, since, until,
                                         dry_run=dry_run, progress=window_progress)
    return report


def _boundary(cur: Any, since: datetime, until: datetime) -> datetime:
    """The end of the slice from ``since``: before the event time of the
    ``SLICE_PAYMENTS``-th payment after it, or past every payment of one event time when
    more than that many share it."""
    window = {"since": since, "until": until}
    cur.execute(NEXT_BOUNDARY, {**window, "limit": SLICE_PAYMENTS})
    row = cur.fetchone()
    if row is None:
        return until
    if row[0] > since:
        return row[0]
    cur.execute(NEXT_TIME, window)
    later = cur.fetchone()[0]
    return later if later is not None else until


def _slice(cur: Any, active: ActiveConfig, since: datetime, until: datetime,
           report: ReprocessReport) -> None:
    cur.execute(SELECT_PAYMENTS, {"since": since, "until": until})
    payments = [payment_from_row(row) for row in cur.fetchall()]
    report.payments += len(payments)
    if not payments:
        return
    engine, version = active.engine, active.version
    want: dict[tuple[str, str], tuple[Any, ...]] = {}
    metric_rows: list[tuple[Any, ...]] = []
    for p in payments:
        result = engine.extract(p, 0, no_history)
        for kind, data in result.rows():
            metric_rows.append((p.transaction_id, kind, orjson.dumps(data).decode(), version))
        for rule, evidence in (result.evidence or {}).items():
            want[(p.transaction_id, rule)] = (
                p.transaction_id, rule, p.customer_id, p.merchant_id, p.event_time,
                p.amount_minor, p.currency, version, orjson.dumps(evidence).decode())
    for row in _judge(cur, engine.customer_rules, since, until, version):
        want[(row[0], row[1])] = row
    ids = [p.transaction_id for p in payments]
    cur.execute(SELECT_FLAGS, {"ids": ids})
    have = {(tx, rule): (status, flagged_under) for tx, rule, status, flagged_under
            in cur.fetchall()}
    added = [row for key, row in want.items() if key not in have]
    kept = [key for key in want if key in have]
    removed = [key for key in have if key not in want]
    report.added.update(rule for _, rule in (row[:2] for row in added))
    report.kept.update(rule for _, rule in kept)
    report.removed.update(rule for _, rule in removed)
    report.removed_reviewed += [(tx, rule, have[(tx, rule)][0]) for tx, rule in removed
                                if have[(tx, rule)][0] != "open"]
    if removed:
        execute_values(cur, DELETE_FLAGS, sorted(removed), page_size=1000)
    if added:
        insert_flags(cur, sorted(added))
    changed = [(tx, rule, want[(tx, rule)][8], version) for tx, rule in sorted(kept)
               if have[(tx, rule)][1] != version]
    if changed:
        execute_values(cur, UPDATE_KEPT, changed, page_size=1000)
    cur.execute(DELETE_METRICS, {"ids": ids})
    if metric_rows:
        execute_values(cur, INSERT_METRICS, metric_rows, template=METRICS_TEMPLATE,
                       page_size=1000)


def _judge(cur: Any, rules: Sequence[Any], since: datetime, until: datetime,
           version: str) -> list[tuple[Any, ...]]:
    """Flag rows of the slice's payments under the customer-scope ``rules``."""
    rows: list[tuple[Any, ...]] = []
    for rule in rules:
        sql, params, cap = customer_rules.rule_query(rule)
        cur.execute(VELOCITY if rule.kind == "velocity" else STRUCTURING,
                    {**sql, "since": since, "until": until})
        rows += customer_rules.flag_rows(cur.fetchall(), rule, params, cap, version)
    return rows
