"""The compliance rules over a customer's payments, judged in PostgreSQL as payments are
stored: per customer, across every merchant and partition (ADR 0013).

Semantics (docs/metrics.md, "Rules over a customer's payments"), over the accepted
payments (``normalized_transactions``), whatever their status:

- ``velocity`` flags p when the customer has more than ``max_payments`` payments q with
  ``p.t - within_seconds < q.t <= p.t`` (p among them);
- ``structuring`` flags p when p is in its currency's band (``lower_fraction x
  threshold <= amount < threshold``) and the customer has at least ``min_payments``
  in-band payments q in that currency with ``p.t - within_seconds < q.t <= p.t``.

These depend on every payment with an event time in p's window, whenever it arrives: a
payment q stored after p with an earlier event time (another merchant's partition behind,
a late event) can flag p. So each stored payment q re-judges the customer's payments p
with ``q.t <= p.t < q.t + within_seconds`` (q itself among them), and a flag once written
stays: counts only grow. The flags are then the same in any order of arrival.

Two workers storing payments of one customer at once must each see the other's: the sink
takes a transaction-level advisory lock for the customers of its write (one per bucket of
customers, in order, so two writers never deadlock) before it inserts, and holds it to
its commit, so the later writer's judgement sees the earlier writer's committed payments.
It all runs in the transaction that stores the payments: a crash or replay re-judges
nothing twice (a replay inserts no payment, so judges none), and a flag is inserted with
``ON CONFLICT DO NOTHING``, so a review is never reset.

Work per payment is bounded for a customer with thousands of payments in a window: each
window is read oldest first up to ``max(EVIDENCE_PAYMENTS, limit)`` rows, which decides
the verdict and is the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from models.events import ParsedTransaction
from pipeline.compliance import EVIDENCE_PAYMENTS

LOCK_CLASS = 0x43555354  # "CUST": the first key of the two-key advisory locks
# Customers share LOCK_BUCKETS locks (by a hash of their id): a write takes at most that
# many, however many customers it holds. PostgreSQL's lock table has room for
# max_locks_per_transaction (64) x max_connections (100) = 6,400 locks in all; one lock
# per customer would overflow it ("out of shared memory") with two writes of a few
# thousand customers. Customers sharing a bucket only wait for each other a little more.
LOCK_BUCKETS = 256

# after the COPY into stage_transactions, before the INSERT: the buckets of this write's
# customers, locked in order (the Sort feeds the aggregate in that order), so two writers
# never deadlock
LOCK_CUSTOMERS = f"""
SELECT count(pg_advisory_xact_lock({LOCK_CLASS}, k))
FROM (SELECT DISTINCT abs(hashtext(customer_id) % {LOCK_BUCKETS}) AS k
      FROM stage_transactions ORDER BY 1) s
"""

# json, not jsonb: the list is text until the flag's evidence parses it once (building
# jsonb here, then text, then jsonb again, was a sixth of the velocity judgement's time)
EVIDENCE_ROW = """json_build_object(
    'transaction_id', q.transaction_id, 'merchant_id', q.merchant_id,
    'amount_minor', q.amount_minor,
    'event_time', to_char(q.event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))"""

# The new payments come from the write's staging table (storage.postgres), and each reaches
# the payments it re-judges through a LATERAL lookup in
# ix_normalized_transactions_customer_event_time, and their flags by the flags' key,
# so a write's cost follows its own payments, never the table's size: joining the table
# let the planner scan and sort all of it for each write, and the flags' check outside the
# lookup let it hash every flag of the rule for each write (15 ms of a 3,000-payment
# write's 162 with 32,375 velocity flags stored; benchmarks.customer_rules).
_NEW = """
    SELECT s.customer_id, s.currency, s.amount_minor, to_timestamp(s.event_ts) AS event_time
    FROM stage_transactions s
    WHERE s.transaction_id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb))
"""
_REACHED = """
    CROSS JOIN LATERAL (
        SELECT p.transaction_id, p.customer_id, p.merchant_id, p.event_time,
               p.amount_minor, p.currency
        FROM normalized_transactions p
        WHERE p.customer_id = n.customer_id AND p.event_time >= n.event_time
          AND p.event_time < n.event_time + make_interval(secs => %(within)s)
          AND NOT EXISTS (SELECT 1 FROM compliance_flags f
                          WHERE f.transaction_id = p.transaction_id AND f.rule = %(rule)s)
        OFFSET 0) p  -- a fence: kept a per-payment index lookup, never flattened
"""

# The judgement of the payments of an ``affected`` CTE (transaction_id, customer_id,
# merchant_id, event_time, amount_minor, currency): here those a write reaches, in
# storage.reprocess those of a range. The evidence is built only for the payments flagged.
VELOCITY_JUDGED = f"""counted AS MATERIALIZED (  -- each count once, not again for the output
    SELECT a.*, (SELECT count(*) FROM (
                     SELECT 1 FROM normalized_transactions q
                     WHERE q.customer_id = a.customer_id
                       AND q.event_time > a.event_time - make_interval(secs => %(within)s)
                       AND q.event_time <= a.event_time
                     LIMIT %(cap)s) c) AS n
    FROM affected a
)
SELECT f.transaction_id, f.customer_id, f.merchant_id, f.event_time, f.amount_minor,
       f.currency, f.n,
       (SELECT json_agg({EVIDENCE_ROW} ORDER BY q.event_time, q.transaction_id)
        FROM (SELECT transaction_id, merchant_id, amount_minor, event_time
              FROM normalized_transactions
              WHERE customer_id = f.customer_id
                AND event_time > f.event_time - make_interval(secs => %(within)s)
                AND event_time <= f.event_time
              ORDER BY event_time, transaction_id
              LIMIT %(cap)s) q)::text AS payments
FROM counted f
WHERE f.n > %(max_payments)s
ORDER BY f.transaction_id
"""

# each currency's band, for structuring's queries (the first CTE)
BAND = """band(currency, low, high) AS (
    SELECT * FROM unnest(%(band_currencies)s::text[], %(lows)s::float8[], %(highs)s::bigint[])
)"""

STRUCTURING_JUDGED = f"""in_band AS (  -- the in-band payments of each one's window, oldest first
    SELECT a.transaction_id AS flagged, q.*
    FROM affected a
    CROSS JOIN LATERAL (
        SELECT q.transaction_id, q.merchant_id, q.amount_minor, q.event_time
        FROM normalized_transactions q
        JOIN band b ON b.currency = q.currency AND q.amount_minor >= b.low
                   AND q.amount_minor < b.high
        WHERE q.customer_id = a.customer_id AND q.currency = a.currency
          AND q.event_time > a.event_time - make_interval(secs => %(within)s)
          AND q.event_time <= a.event_time
        ORDER BY q.event_time, q.transaction_id
        LIMIT %(cap)s) q
)
SELECT a.transaction_id, a.customer_id, a.merchant_id, a.event_time, a.amount_minor,
       a.currency, w.n, w.payments::text
FROM affected a
JOIN (SELECT q.flagged, count(*) AS n,
             json_agg({EVIDENCE_ROW} ORDER BY q.event_time, q.transaction_id) AS payments
      FROM in_band q GROUP BY q.flagged) w ON w.flagged = a.transaction_id
WHERE w.n >= %(min_payments)s
ORDER BY a.transaction_id
"""

VELOCITY = f"""
WITH new AS ({_NEW}), affected AS (
    SELECT DISTINCT p.* FROM new n {_REACHED}
), {VELOCITY_JUDGED}"""

STRUCTURING = f"""
WITH {BAND}, new AS (
    SELECT n.* FROM ({_NEW}) n
    JOIN band b ON b.currency = n.currency AND n.amount_minor >= b.low
               AND n.amount_minor < b.high
), affected AS (
    SELECT DISTINCT p.* FROM new n {_REACHED}
    WHERE p.currency = n.currency
      AND EXISTS (SELECT 1 FROM band b WHERE b.currency = p.currency
                  AND p.amount_minor >= b.low AND p.amount_minor < b.high)
), {STRUCTURING_JUDGED}"""


def _insert(judging: str, evidence: str = "") -> str:
    """The sink's statement: flag what ``judging`` finds, with the evidence that
    :func:`flag_rows` makes, built as JSONB beside the list of payments. Sent to Python
    and back as text, the evidence of a write where the velocity rule fires often was
    most of the time the write spent on flags."""
    return f"""
WITH judged AS ({judging})
INSERT INTO compliance_flags (
    transaction_id, rule, customer_id, merchant_id, event_time, amount_minor, currency,
    config_version, evidence
)
SELECT j.transaction_id, %(rule)s, j.customer_id, j.merchant_id, j.event_time,
       j.amount_minor, j.currency, %(version)s,
       %(params)s::jsonb || jsonb_build_object({evidence}'counted', j.n,
           'complete', j.n < %(cap)s, 'payments', j.payments::jsonb)
FROM judged j
ORDER BY j.transaction_id
ON CONFLICT (transaction_id, rule) DO NOTHING
RETURNING rule
"""


INSERT_VELOCITY = _insert(VELOCITY)
INSERT_STRUCTURING = _insert(STRUCTURING, """'threshold_minor', (
    SELECT b.high FROM unnest(%(band_currencies)s::text[], %(highs)s::bigint[]) AS b(currency, high)
    WHERE b.currency = j.currency), """)


def judge(cur: Any, rules: Sequence[Any], payments: Sequence[ParsedTransaction],
          config_version: str) -> list[str]:
    """Insert the ``compliance_flags`` rows of the payments that ``payments``, stored in
    this transaction (and still in its ``stage_transactions``), make flagged under
    ``rules``; returns the rule of each row inserted."""
    # one JSON text: psycopg2 quotes a list parameter's every item holding the GIL
    ids = orjson.dumps([p.transaction_id for p in payments]).decode()
    inserted: list[str] = []
    for rule in rules:
        cur.execute(*statement(rule, ids, config_version))
        inserted += [r[0] for r in cur.fetchall()]
    return inserted


def statement(rule: Any, ids: str, config_version: str) -> tuple[str, dict[str, Any]]:
    """A customer-scope rule's judging statement for the payments ``ids`` (a JSON list)
    of this transaction's ``stage_transactions``, and its parameters."""
    sql, params, _ = rule_query(rule)
    return (INSERT_VELOCITY if rule.kind == "velocity" else INSERT_STRUCTURING,
            {"ids": ids, "version": config_version, **sql, "rule": rule.kind,
             "params": orjson.dumps(params).decode()})


def rule_query(rule: Any) -> tuple[dict[str, Any], dict[str, Any], int]:
    """A customer-scope rule's query parameters (``within``, ``cap`` and its own), the
    parameters its evidence records, and ``cap``: how many payments are counted and
    listed at most."""
    if rule.kind == "velocity":
        cap = max(EVIDENCE_PAYMENTS, rule.max_payments + 1)
        return ({"within": rule.within, "cap": cap, "max_payments": rule.max_payments},
                {"max_payments": rule.max_payments, "within_seconds": rule.within}, cap)
    if rule.kind == "structuring":
        cap = max(EVIDENCE_PAYMENTS, rule.min_payments)
        band = sorted(rule.thresholds)
        return ({"within": rule.within, "cap": cap, "min_payments": rule.min_payments,
                 "band_currencies": band,
                 "lows": [rule.thresholds[c] * rule.fraction for c in band],
                 "highs": [rule.thresholds[c] for c in band]},
                {"lower_fraction": rule.fraction, "min_payments": rule.min_payments,
                 "within_seconds": rule.within}, cap)
    raise ValueError(f"no customer-scope judgement for rule {rule.kind!r}")


def flag_rows(fetched: Sequence[tuple[Any, ...]], rule: Any, params: dict[str, Any],
              cap: int, config_version: str) -> list[tuple[Any, ...]]:
    """``compliance_flags`` rows from the rows a judging query returned: ``(id, customer,
    merchant, event time, amount, currency, counted, listed payments as JSON text)``.
    The listed payments' text goes into the evidence as it came, never parsed."""
    rows = []
    for tx_id, customer, merchant, when, amount, currency, n, listed in fetched:
        evidence = dict(params)
        if rule.kind == "structuring":
            evidence["threshold_minor"] = rule.thresholds[currency]
        evidence.update(counted=int(n), complete=int(n) < cap)
        text = f'{orjson.dumps(evidence).decode()[:-1]},"payments":{listed or "null"}}}'
        rows.append((tx_id, rule.kind, customer, merchant, when, amount, currency,
                     config_version, text))
    return rows
