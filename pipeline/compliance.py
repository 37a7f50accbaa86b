"""Compliance rules (``compliance:rules:v1``).

A rule on the payment alone (large amount, country, risk score) emits
``compliance_<rule>`` = 1 when the payment trips it and 0 otherwise, so its windowed
mean is the share of flagged payments and its sum the number of flags. The rules over
a customer's payments (velocity, structuring) are judged per customer across every
merchant when payments are stored, in PostgreSQL (:mod:`storage.customer_rules`): they
emit no per-event metric, only flags. Every flagged payment becomes a
``compliance_flags`` row. See docs/metrics.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from pipeline.metrics import (
    MetricDef,
    MetricExtractor,
    MetricsConfigError,
    MetricType,
    _param,
    flag,
    member,
    register,
)

NO_LIMIT = 2 ** 62  # the largest threshold LargeAmount's kernel compares
EVIDENCE_PAYMENTS = 50  # at most this many payments counted and listed in a flag's evidence


class Rule(MetricExtractor):
    is_rule = True
    # judged per customer across merchants when payments are stored, not per event: no
    # per-event metric, only flags (storage.customer_rules)
    customer_scope: ClassVar[bool] = False
    metric: str

    def definitions(self) -> list[MetricDef]:
        return [] if self.customer_scope else [MetricDef(self.metric, MetricType.RATE)]

    def extract(self, tx: Any, offset: int, history: Any) -> tuple[tuple[str, float], ...]:
        return ()  # a customer-scope rule; per-event rules override this

    def evidence(self, tx: Any, offset: int, history: Any) -> dict[str, Any]:
        """Why the rule flagged ``tx`` (called only when it did): JSON-ready, stored in
        ``compliance_flags.evidence``."""
        return {}


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

    def extract_columns(self, cols):
        codes, currencies = cols.codes("currency")
        limits = [self.thresholds.get(c) for c in currencies]
        if any(limit is not None and limit > NO_LIMIT for limit in limits):
            return None  # beyond int64: the per-payment comparison decides
        if not limits:
            return [(self.metric, flag(np.zeros(0, np.bool_)), None)]
        # a currency without a threshold is never flagged, whatever the amount
        has = np.array([limit is not None for limit in limits], np.bool_)[codes]
        floor = np.array([NO_LIMIT if limit is None else limit for limit in limits],
                         np.int64)[codes]
        return [(self.metric, flag(has & (cols.amount_minor >= floor)), None)]

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

    def extract_columns(self, cols):
        return [(self.metric, flag(member(cols, "country", self.countries)), None)]

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

    def extract_columns(self, cols):
        return [(self.metric, flag(cols.has_risk & (cols.risk_score >= self.threshold)), None)]

    def evidence(self, tx, offset, history):
        return {"risk_score": tx.risk_score, "threshold": self.threshold}


@register
class Velocity(Rule):
    """More than ``max_payments`` accepted payments of one customer, at any merchant, with
    event times in ``(t - within_seconds, t]`` of this one's ``t`` (this one included).

    Judged in PostgreSQL when payments are stored, over every merchant's payments of the
    customer (:mod:`storage.customer_rules`), not per event here."""

    kind = "velocity"
    metric = "compliance_velocity"
    customer_scope = True

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.max_payments = _positive(params, "max_payments", "rule 'velocity'")
        self.within = _positive(params, "within_seconds", "rule 'velocity'")


@register
class Structuring(Rule):
    """A payment just under its currency's threshold (``lower_fraction`` of it or more,
    below it) when the customer has at least ``min_payments`` such payments in that
    currency, at any merchant, with event times in ``(t - within_seconds, t]`` (this one
    included). Judged in PostgreSQL, as velocity is."""

    kind = "structuring"
    metric = "compliance_structuring"
    customer_scope = True

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        where = "rule 'structuring'"
        self.thresholds = _thresholds(params, where)
        self.min_payments = _positive(params, "min_payments", where)
        self.within = _positive(params, "within_seconds", where)
        self.fraction = float(_param(params, "lower_fraction", (int, float), where))
        if not 0.0 < self.fraction < 1.0:
            raise MetricsConfigError(f"{where}: lower_fraction {self.fraction} is outside (0, 1)")
