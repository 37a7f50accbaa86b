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
takes a transaction-level advisory lock per customer of its write (in key order, so two
writers never deadlock) before it inserts, and holds it to its commit, so the later
writer's judgement sees the earlier writer's committed payments. It all runs in the
transaction that stores the payments: a crash or replay re-judges nothing twice (a
replay inserts no payment, so judges none), and a flag is inserted with ``ON CONFLICT DO
NOTHING``, so a review is never reset.

Work per payment is bounded for a customer with thousands of payments in a window: each
window is read oldest first up to ``max(EVIDENCE_PAYMENTS, limit)`` rows, which decides
the verdict and is the evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from pipeline.compliance import EVIDENCE_PAYMENTS

LOCK_CLASS = 0x43555354  # "CUST": the first key of the two-key advisory locks

# after the COPY into stage_transactions, before the INSERT: the customers of this write,
# locked in key order (the Sort feeds the aggregate in that order)
LOCK_CUSTOMERS = f"""
SELECT count(pg_advisory_xact_lock({LOCK_CLASS}, k))
FROM (SELECT DISTINCT hashtext(customer_id) AS k FROM stage_transactions ORDER BY 1) s
"""

_EVIDENCE_ROW = """jsonb_build_object(
    'transaction_id', q.transaction_id, 'merchant_id', q.merchant_id,
    'amount_minor', q.amount_minor,
    'event_time', to_char(q.event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))"""

VELOCITY = f"""
WITH new AS (
    SELECT customer_id, event_time FROM normalized_transactions
    WHERE transaction_id = ANY(%(ids)s)
), affected AS (
    SELECT DISTINCT p.transaction_id, p.customer_id, p.merchant_id, p.event_time,
           p.amount_minor, p.currency
    FROM new n
    JOIN normalized_transactions p
      ON p.customer_id = n.customer_id AND p.event_time >= n.event_time
     AND p.event_time < n.event_time + make_interval(secs => %(within)s)
    WHERE NOT EXISTS (SELECT 1 FROM compliance_flags f
                      WHERE f.transaction_id = p.transaction_id AND f.rule = %(rule)s)
)
SELECT a.transaction_id, a.customer_id, a.merchant_id, a.event_time, a.amount_minor,
       a.currency, w.n, w.payments
FROM affected a
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           jsonb_agg({_EVIDENCE_ROW} ORDER BY q.event_time, q.transaction_id) AS payments
    FROM (SELECT transaction_id, merchant_id, amount_minor, event_time
          FROM normalized_transactions
          WHERE customer_id = a.customer_id
            AND event_time > a.event_time - make_interval(secs => %(within)s)
            AND event_time <= a.event_time
          ORDER BY event_time, transaction_id
          LIMIT %(cap)s) q
) w
WHERE w.n > %(max_payments)s
ORDER BY a.transaction_id
"""

STRUCTURING = f"""
WITH band(currency, low, high) AS (
    SELECT * FROM unnest(%(currencies)s::text[], %(lows)s::float8[], %(highs)s::bigint[])
), new AS (
    SELECT t.customer_id, t.currency, t.event_time
    FROM normalized_transactions t
    JOIN band b ON b.currency = t.currency AND t.amount_minor >= b.low
               AND t.amount_minor < b.high
    WHERE t.transaction_id = ANY(%(ids)s)
), affected AS (
    SELECT DISTINCT p.transaction_id, p.customer_id, p.merchant_id, p.event_time,
           p.amount_minor, p.currency
    FROM new n
    JOIN normalized_transactions p
      ON p.customer_id = n.customer_id AND p.currency = n.currency
     AND p.event_time >= n.event_time
     AND p.event_time < n.event_time + make_interval(secs => %(within)s)
    JOIN band b ON b.currency = p.currency AND p.amount_minor >= b.low
               AND p.amount_minor < b.high
    WHERE NOT EXISTS (SELECT 1 FROM compliance_flags f
                      WHERE f.transaction_id = p.transaction_id AND f.rule = %(rule)s)
)
SELECT a.transaction_id, a.customer_id, a.merchant_id, a.event_time, a.amount_minor,
       a.currency, w.n, w.payments
FROM affected a
CROSS JOIN LATERAL (
    SELECT count(*) AS n,
           jsonb_agg({_EVIDENCE_ROW} ORDER BY q.event_time, q.transaction_id) AS payments
    FROM (SELECT q.transaction_id, q.merchant_id, q.amount_minor, q.event_time
          FROM normalized_transactions q
          JOIN band b ON b.currency = q.currency AND q.amount_minor >= b.low
                     AND q.amount_minor < b.high
          WHERE q.customer_id = a.customer_id AND q.currency = a.currency
            AND q.event_time > a.event_time - make_interval(secs => %(within)s)
            AND q.event_time <= a.event_time
          ORDER BY q.event_time, q.transaction_id
          LIMIT %(cap)s) q
) w
WHERE w.n >= %(min_payments)s
ORDER BY a.transaction_id
"""


def judge(cur: Any, rules: Sequence[Any], ids: Sequence[str],
          config_version: str) -> list[tuple[Any, ...]]:
    """``compliance_flags`` rows (evidence as JSON text) of the payments that the payments
    ``ids``, stored in this transaction, make flagged under ``rules``."""
    rows: list[tuple[Any, ...]] = []
    for rule in rules:
        if rule.kind == "velocity":
            cap = max(EVIDENCE_PAYMENTS, rule.max_payments + 1)
            cur.execute(VELOCITY, {"ids": list(ids), "within": rule.within, "rule": rule.kind,
                                   "cap": cap, "max_payments": rule.max_payments})
            params: dict[str, Any] = {"max_payments": rule.max_payments,
                                      "within_seconds": rule.within}
        elif rule.kind == "structuring":
            cap = max(EVIDENCE_PAYMENTS, rule.min_payments)
            currencies = sorted(rule.thresholds)
            cur.execute(STRUCTURING, {
                "ids": list(ids), "within": rule.within, "rule": rule.kind, "cap": cap,
                "min_payments": rule.min_payments, "currencies": currencies,
                "lows": [rule.thresholds[c] * rule.fraction for c in currencies],
                "highs": [rule.thresholds[c] for c in currencies]})
            params = {"lower_fraction": rule.fraction, "min_payments": rule.min_payments,
                      "within_seconds": rule.within}
        else:
            raise ValueError(f"no customer-scope judgement for rule {rule.kind!r}")
        for tx_id, customer, merchant, when, amount, currency, n, payments in cur.fetchall():
            evidence = dict(params)
            if rule.kind == "structuring":
                evidence["threshold_minor"] = rule.thresholds[currency]
            evidence.update(counted=int(n), complete=int(n) < cap, payments=payments)
            rows.append((tx_id, rule.kind, customer, merchant, when, amount, currency,
                         config_version, orjson.dumps(evidence).decode()))
    return rows
