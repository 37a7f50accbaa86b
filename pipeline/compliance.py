"""Compliance rules (``compliance:rules:v1``): each one a rate metric per payment.

A rule emits ``compliance_<rule>`` = 1 when the payment trips it and 0
otherwise, so its windowed mean is the share of flagged payments and its sum
the number of flags. Rules over time (velocity, structuring) look at the
customer's earlier payments in the same source partition (``history``, kept
by :class:`tables.seen.SeenIds` for the dedupe window); only payments at
lower offsets count, so a replay after a crash gives the same verdicts.

Time windows are on event time and inclusive: a payment exactly
``within_seconds`` away counts. See docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from pipeline.metrics import (
    MetricDef,
    MetricExtractor,
    MetricsConfigError,
    MetricType,
    _param,
    register,
    time_range,
)

EVIDENCE_PAYMENTS = 50  # at most this many payments in a flag's evidence (a hot customer)


class Rule(MetricExtractor):
    is_rule = True
    metric: str

    def definitions(self) -> list[MetricDef]:
        return [MetricDef(self.metric, MetricType.RATE)]

    def evidence(self, tx: Any, offset: int, history: Any) -> dict[str, Any]:
        """Why the rule flagged ``tx`` (called only when it did): JSON-ready, stored in
        ``compliance_flags.evidence``. Rules over time list the payments that counted,
        by source offset; the sink adds their transaction ids."""
        return {}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


def _listed(entries: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
    """The evidence's payments, oldest first; ``complete`` is False when the scan stopped
    at ``EVIDENCE_PAYMENTS`` (then more payments counted than are listed)."""
    entries.sort(key=lambda e: (e["event_time"], e["offset"]))
    return {"listed": len(entries), "complete": complete, "payments": entries}


def _thresholds(params: Mapping[str, Any], where: str) -> dict[str, int]:
    raw = _param(params, "thresholds_minor", dict, where)
    out = {}
    for currency, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise MetricsConfigError(f"{where}: thresholds_minor.{currency} is {value!r}, "
                                     f"expected a positive integer (minor units)")
        out[str(currency)] = value
    if not out:
        raise MetricsConfigError(f"{where}: thresholds_minor is empty")
    return out


def _positive(params: Mapping[str, Any], name: str, where: str) -> int:
    value = _param(params, name, int, where)
    if value <= 0:
        raise MetricsConfigError(f"{where}: {name} must be positive, got {value}")
    return value


@register
class LargeAmount(Rule):
    """An amount at or above the reporting threshold of its currency."""

    kind = "large_amount"
    metric = "compliance_large_amount"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.thresholds = _thresholds(params, "rule 'large_amount'")

    def extract(self, tx, offset, history):
        limit = self.thresholds.get(tx.currency)
        return ((self.metric, 1 if limit is not None and tx.amount_minor >= limit else 0),)

    def evidence(self, tx, offset, history):
        return {"amount_minor": tx.amount_minor, "currency": tx.currency,
                "threshold_minor": self.thresholds[tx.currency]}


@register
class HighRiskCountry(Rule):
    """A payment from a country on the list."""

    kind = "high_risk_country"
    metric = "compliance_high_risk_country"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.countries = frozenset(_param(params, "countries", list, "rule 'high_risk_country'"))

    def extract(self, tx, offset, history):
        return ((self.metric, 1 if tx.country in self.countries else 0),)

    def evidence(self, tx, offset, history):
        return {"country": tx.country}


@register
class HighRiskScore(Rule):
    """A risk score at or above the threshold (payments without a score never trip it)."""

    kind = "high_risk_score"
    metric = "compliance_high_risk_score"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.threshold = float(_param(params, "threshold", (int, float), "rule 'high_risk_score'"))
        if not 0.0 <= self.threshold <= 1.0:
            raise MetricsConfigError(f"rule 'high_risk_score': threshold {self.threshold} "
                                     f"is outside 0..1")

    def extract(self, tx, offset, history):
        score = tx.risk_score
        return ((self.metric, 1 if score is not None and score >= self.threshold else 0),)

    def evidence(self, tx, offset, history):
        return {"risk_score": tx.risk_score, "threshold": self.threshold}


@register
class Velocity(Rule):
    """More than ``max_payments`` payments of one customer within ``within_seconds``
    (this one included; earlier payments on either side of its event time count)."""

    kind = "velocity"
    metric = "compliance_velocity"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.max_payments = _positive(params, "max_payments", "rule 'velocity'")
        self.within = _positive(params, "within_seconds", "rule 'velocity'")

    def extract(self, tx, offset, history):
        t = tx.event_ts
        n = 1
        past = history(tx.customer_id)
        times = getattr(past, "times", None)  # (ts, offset) only, from memory mostly
        found = (times(t - self.within, t + self.within) if times is not None
                 else ((e[0], e[1]) for e in time_range(past, t - self.within,
                                                        t + self.within)))
        for ts, off in found:
            if (offset < 0 or off < offset) and abs(ts - t) <= self.within:
                n += 1
                if n > self.max_payments:  # the verdict is in: bounded time per payment
                    break
        return ((self.metric, 1 if n > self.max_payments else 0),)

    def evidence(self, tx, offset, history):
        """The payment and the customer's others that counted, oldest first, bounded
        (a hot customer has thousands: the scan stops at ``EVIDENCE_PAYMENTS``)."""
        t = tx.event_ts
        counted = [{"offset": offset, "event_time": _iso(t)}]
        complete = True
        for e in time_range(history(tx.customer_id), t - self.within, t + self.within):
            ts, off = e[0], e[1]
            if (offset < 0 or off < offset) and abs(ts - t) <= self.within:
                if len(counted) == EVIDENCE_PAYMENTS:
                    complete = False
                    break
                counted.append({"offset": off, "event_time": _iso(ts)})
        return {"max_payments": self.max_payments, "within_seconds": self.within,
                **_listed(counted, complete)}


@register
class Structuring(Rule):
    """At least ``min_payments`` amounts just under the large-amount threshold
    (``lower_fraction`` of it or more, below it) by one customer in one currency
    within ``within_seconds``, this payment being one of them."""

    kind = "structuring"
    metric = "compliance_structuring"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        where = "rule 'structuring'"
        self.thresholds = _thresholds(params, where)
        self.min_payments = _positive(params, "min_payments", where)
        self.within = _positive(params, "within_seconds", where)
        self.fraction = float(_param(params, "lower_fraction", (int, float), where))
        if not 0.0 < self.fraction < 1.0:
            raise MetricsConfigError(f"{where}: lower_fraction {self.fraction} is outside (0, 1)")

    def _just_under(self, amount: int, currency: str) -> bool:
        limit = self.thresholds.get(currency)
        return limit is not None and limit * self.fraction <= amount < limit

    def extract(self, tx, offset, history):
        if not self._just_under(tx.amount_minor, tx.currency):
            return ((self.metric, 0),)
        t = tx.event_ts
        n = 1
        past = history(tx.customer_id)
        amounts = getattr(past, "amounts", None)
        if amounts is not None:  # only the payments just under, from an index by amount
            limit = self.thresholds[tx.currency]
            candidates = amounts(tx.currency, limit * self.fraction, limit)
        else:
            candidates = time_range(past, t - self.within, t + self.within)
        for ts, off, amount, currency in candidates:
            if ((offset < 0 or off < offset) and currency == tx.currency
                    and abs(ts - t) <= self.within and self._just_under(amount, currency)):
                n += 1
                if n >= self.min_payments:
                    break
        return ((self.metric, 1 if n >= self.min_payments else 0),)

    def evidence(self, tx, offset, history):
        """The in-band payments that counted, bounded like velocity's; found through the
        index by amount when the history has one, as the verdict was."""
        t = tx.event_ts
        limit = self.thresholds[tx.currency]
        counted = [{"offset": offset, "event_time": _iso(t), "amount_minor": tx.amount_minor}]
        complete = True
        past = history(tx.customer_id)
        amounts = getattr(past, "amounts", None)
        candidates = (amounts(tx.currency, limit * self.fraction, limit) if amounts is not None
                      else time_range(past, t - self.within, t + self.within))
        for ts, off, amount, currency in candidates:
            if ((offset < 0 or off < offset) and currency == tx.currency
                    and abs(ts - t) <= self.within and self._just_under(amount, currency)):
                if len(counted) == EVIDENCE_PAYMENTS:
                    complete = False
                    break
                counted.append({"offset": off, "event_time": _iso(ts), "amount_minor": amount})
        return {"currency": tx.currency, "threshold_minor": limit,
                "lower_fraction": self.fraction, "min_payments": self.min_payments,
                "within_seconds": self.within, **_listed(counted, complete)}
