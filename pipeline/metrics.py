"""Metric extraction: what each accepted payment is worth to a compliance team.

Pure code, no Faust and no I/O. The pieces:

- :class:`MetricType` and :class:`DynamicMetric`: one named value of one
  payment, with a *dimension* (``""`` for all payments, ``"channel=pos"``,
  ``"currency=EUR,channel=pos"``, ...).
- :class:`MetricExtractor`: an extractor yields ``(metric name, value)`` pairs
  for a payment; the :class:`MetricEngine` turns each pair into one metric per
  configured dimension. Extractors are registered by name (:func:`register`)
  and chosen and parameterized by configuration
  (``config/metrics.yaml`` = ``metrics:definitions:v1``; compliance rules in
  :mod:`pipeline.compliance` from ``config/compliance.yaml`` =
  ``compliance:rules:v1``).
- :class:`ExtractionResult`: the metrics plus the errors of extractors that
  failed; one failing extractor loses neither the others' metrics nor the
  payment.

A metric is *windowed* when every field of its dimension is in the
configuration's ``windowed_dimensions`` (low-cardinality fields such as
channel or currency) and it is not a gauge: the windowed tables then aggregate it as a
:class:`~pipeline.histogram.Histogram` (bucketed for histogram metrics; count,
sum, min and max for the others). Per-merchant metrics stay per payment.

The engine compiles the configuration once (dimension key functions, bucket
bounds, extractor instances); the hot path does no parsing or lookups by name.
See docs/metrics.md for every default metric.
"""

from __future__ import annotations

import bisect
import logging
import math
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from operator import itemgetter
from typing import Any, ClassVar, Protocol, cast

import msgspec
import numpy as np

from models.errors import PaymentMonitorError
from models.events import STATUSES, ParsedTransaction
from pipeline.columns import STATUS_CODES, PaymentColumns
from pipeline.histogram import check_bounds

log = logging.getLogger(__name__)


# Fields a dimension may name (the typed payment's low- and high-cardinality strings).
DIMENSION_FIELDS = ("channel", "currency", "payment_method", "country", "status",
                    "merchant_id", "customer_id", "decline_code")


class MetricType(StrEnum):
    COUNTER = "counter"  # a count to add up (value is usually 1)
    GAUGE = "gauge"  # a measured value of this payment
    HISTOGRAM = "histogram"  # a value to distribute over configured buckets
    RATE = "rate"  # 0 or 1: its mean over payments is the rate


class DynamicMetric(msgspec.Struct, frozen=True, gc=False, array_like=True):
    """One metric of one payment."""

    name: str
    type: MetricType
    dimension: str
    value: float
    windowed: bool = False


class ExtractorError(msgspec.Struct, frozen=True):
    """An extractor that raised on a payment; the payment and the other metrics are kept."""

    extractor: str
    error: str


class MetricInfo:
    """A metric as compiled for the hot path: its name, type and dimension slots."""

    __slots__ = ("name", "type", "type_name", "slots", "windowed", "index", "rule")

    def __init__(self, name: str, type: MetricType, slots: Sequence[tuple[int, bool]],
                 index: int = 0, rule: bool = False) -> None:
        self.name = name
        self.type = type
        self.type_name = str(type.value)  # a plain str: a JSON key
        self.rule = rule  # from a compliance rule
        self.slots = tuple(i for i, _ in slots)  # indices into the payment's dimension strings
        self.windowed = tuple(i for i, w in slots if w)
        self.index = index  # position in the engine's list of metrics


WindowPlan = list[tuple[str, ...]]
"""Per metric (by :attr:`MetricInfo.index`): its window keys ``"<name>|<dimension>"`` for
one combination of windowed dimension values."""


@dataclass(slots=True)
class ExtractionResult:
    """The metrics of one payment, in compact form: each emitted ``(metric, value)`` pair
    stands for one metric per dimension slot. :attr:`metrics` spells them out."""

    dimensions: list[str]
    emitted: list[tuple[MetricInfo, float]]
    errors: list[ExtractorError] = field(default_factory=list)
    plan: WindowPlan = field(default_factory=list)  # window keys of these dimensions
    # rule kind -> why it flagged this payment (Rule.evidence); None when no rule did
    evidence: dict[str, dict[str, Any]] | None = None

    @property
    def metrics(self) -> list[DynamicMetric]:
        dims = self.dimensions
        return [DynamicMetric(info.name, info.type, dims[i], value, i in info.windowed)
                for info, value in self.emitted for i in info.slots]

    def __len__(self) -> int:
        return sum(len(info.slots) for info, _ in self.emitted)

    def rows(self) -> list[tuple[str, dict[str, Any]]]:
        """The ``dynamic_metrics`` rows of this payment, ``(metric_type, metric_data)``:

        - ``("metrics", {metric type: {name: value}})`` always;
        - ``("compliance", {rule metric: 0 or 1})`` when at least one rule flagged it.

        A metric has one value for all its dimensions (the dimensions say which aggregates
        it joins and are the payment's own fields), so each name is stored once. One row per
        metric type was measured at a third of the throughput (docs/metrics.md).
        """
        metrics: dict[str, dict[str, float]] = {}
        rules: dict[str, float] | None = None
        flagged = False
        for info, value in self.emitted:
            if info.rule:
                if rules is None:
                    rules = {}
                rules[info.name] = value
                flagged = flagged or value == 1
                continue
            group = metrics.get(info.type_name)
            if group is None:
                group = metrics[info.type_name] = {}
            group[info.name] = value
        out: list[tuple[str, dict[str, Any]]] = [("metrics", metrics)]
        if flagged and rules is not None:
            out.append(("compliance", rules))
        return out

    def add_windowed(self, grouped: dict[str, list[float]]) -> None:
        """Append each windowed value to ``grouped["<name>|<dimension>"]`` (a defaultdict)."""
        plan = self.plan
        for info, value in self.emitted:
            for key in plan[info.index]:
                grouped[key].append(value)

    def windowed(self) -> list[tuple[str, str, float]]:
        """``(name, dimension, value)`` of every metric kept in the windowed tables."""
        dims = self.dimensions
        return [(info.name, dims[i], value) for info, value in self.emitted
                for i in info.windowed]


class BatchMetrics:
    """The metrics of a batch's accepted payments, a column per metric: what
    :meth:`MetricEngine.extract_batch` gives, and what :meth:`MetricEngine.extract` gives
    payment by payment (:meth:`result` spells one payment's out the same way).

    Attributes:
        cols: the payments, as columns.
        infos: the engine's metrics; ``values[info.index]`` is that metric of every
            payment (int64 or float64; an object array where an extractor had no kernel)
            and ``present[info.index]`` which payments have it (None: all; no values: none).
        windowed: per windowed dimension (an index into the engine's dimensions): each
            payment's code into a list of its dimension strings.
        errors: ``(position, error)`` of the extractors that raised on a payment.
        evidence: position -> rule kind -> why the rule flagged that payment.
    """

    __slots__ = ("cols", "infos", "values", "present", "windowed", "errors", "evidence",
                 "shapes")

    def __init__(self, cols: PaymentColumns, infos: Sequence[MetricInfo],
                 shapes: dict[Any, Any] | None = None) -> None:
        self.cols = cols
        self.infos = list(infos)
        # what a writer made of a row shape once, kept by the engine for its later
        # batches (storage.metric_rows); the same metrics make the same shapes
        self.shapes: dict[Any, Any] = {} if shapes is None else shapes
        self.values: list[np.ndarray | None] = [None] * len(self.infos)
        self.present: list[np.ndarray | None] = [None] * len(self.infos)
        self.windowed: dict[int, tuple[np.ndarray, list[str]]] = {}
        self.errors: list[tuple[int, ExtractorError]] = []
        self.evidence: dict[int, dict[str, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self.cols)

    @classmethod
    def concat(cls, parts: Sequence[BatchMetrics], windowed: bool = False,
               ) -> BatchMetrics | None:
        """The metrics of several batches of one engine, one after another: their values,
        presence, errors and evidence (what a writer reads), and with ``windowed`` their
        windowed dimensions' codes too (into the union of the parts' dimension strings, in
        order of first appearance). None when a metric's values differ in type from one
        batch to another."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        out = cls(PaymentColumns.concat([p.cols for p in parts]), first.infos, first.shapes)
        if windowed:
            for index in first.windowed:
                names: dict[str, int] = {}
                codes = []
                for p in parts:
                    own, labels = p.windowed[index]
                    remap = np.array([names.setdefault(label, len(names)) for label in labels],
                                     np.int64)
                    codes.append(remap[own] if len(own) else own)
                out.windowed[index] = (np.concatenate(codes), list(names))
        starts = np.cumsum([0, *(len(p) for p in parts[:-1])]).tolist()
        for info in first.infos:
            k = info.index
            values = [p.values[k] for p in parts]
            kinds = {v.dtype for v in values if v is not None}
            if not kinds:
                continue
            if len(kinds) > 1:
                return None
            dtype = kinds.pop()
            out.values[k] = np.concatenate([np.zeros(len(p), dtype) if v is None else v
                                            for p, v in zip(parts, values, strict=True)])
            if any(v is None or p.present[k] is not None
                   for p, v in zip(parts, values, strict=True)):
                out.present[k] = np.concatenate([p.has(info) for p in parts])
        for p, start in zip(parts, starts, strict=True):
            out.errors += [(at + start, error) for at, error in p.errors]
            out.evidence.update({at + start: why for at, why in p.evidence.items()})
        return out

    def has(self, info: MetricInfo) -> np.ndarray:
        """Which payments have ``info`` (a boolean mask)."""
        present = self.present[info.index]
        if self.values[info.index] is None:
            return np.zeros(len(self.cols), np.bool_)
        return np.ones(len(self.cols), np.bool_) if present is None else present

    def result(self, i: int, dimensions: Sequence[str] = ()) -> ExtractionResult:
        """Payment ``i``'s metrics as :meth:`MetricEngine.extract` gives them (tests and
        diagnostics; the hot path reads the columns)."""
        emitted = []
        for info in self.infos:
            values, present = self.values[info.index], self.present[info.index]
            if values is not None and (present is None or present[i]):
                emitted.append((info, values[i].item() if values.dtype != object
                                else values[i]))
        return ExtractionResult(list(dimensions), emitted,
                                [e for at, e in self.errors if at == i],
                                evidence=self.evidence.get(i))

    def flagged(self, positions: np.ndarray) -> Counter[str]:
        """How many of the payments at ``positions`` each per-event rule flagged."""
        out: Counter[str] = Counter()
        for info in self.infos:
            values = self.values[info.index]
            if info.rule and values is not None:
                hits = (values[positions] == 1) & self.has(info)[positions]
                if hits.any():
                    out[info.name] = int(hits.sum())
        return out


class MetricsConfigError(PaymentMonitorError, ValueError):
    """A metrics or compliance configuration that cannot be used; names the entry."""


Entry = tuple[float, int, int, str]  # (event ts, offset, amount_minor, currency)

Column = tuple[str, np.ndarray, "np.ndarray | None"]
"""A metric of every payment of a batch: (name, values, present mask or None for all)."""

MAX_SHAPES = 10_000  # row shapes a MetricEngine keeps for its batches' writers
EXACT_FLOAT_INT = 2 ** 53  # integers up to this convert to float64 and back unchanged


def ones(n: int) -> np.ndarray:
    return np.ones(n, np.int64)


def flag(mask: np.ndarray) -> np.ndarray:
    """A boolean column as the 0/1 ints :meth:`MetricExtractor.extract` gives."""
    return mask.astype(np.int64)


def status_is(cols: PaymentColumns, *statuses: str) -> np.ndarray:
    """Which payments have one of ``statuses``: a lookup of each status code in a table
    of the codes (``np.isin`` sorted its arguments: 45 µs a call, most of a small
    batch's extraction)."""
    table = np.zeros(len(STATUSES), np.bool_)
    table[[STATUS_CODES[s] for s in statuses]] = True
    return table[cols.status]


def member(cols: PaymentColumns, field: str, allowed: Iterable[Any]) -> np.ndarray:
    """Which payments' ``field`` is in ``allowed`` (per distinct value, then gathered)."""
    codes, values = cols.codes(field)
    allowed = set(allowed)
    return np.array([v in allowed for v in values], np.bool_)[codes] if values else \
        np.zeros(len(cols), np.bool_)


class PaymentHistory(Protocol):
    """A customer's accepted payments, searchable without a scan of all of them (in
    memory: :class:`SortedHistory`; on disk: :mod:`tables.histories`). The entries
    found may lie a little outside the bounds: callers check."""

    def between(self, low: float, high: float) -> Iterable[Entry]: ...

    def amounts(self, currency: str, low: float, high: float) -> Iterable[Entry]: ...

    def times(self, low: float, high: float) -> Iterable[tuple[float, int]]:
        """(event ts, offset) of the entries between ``low`` and ``high``: all velocity
        needs, and cheaper than whole entries where a store keeps them apart."""
        ...


History = Callable[[str], "Sequence[Entry] | PaymentHistory"]
"""A customer's earlier accepted payments in its partition: (event ts, offset, amount, currency)."""


def no_history(customer_id: str) -> Sequence[tuple[float, int, int, str]]:
    return ()


class SortedHistory(list):  # type: ignore[type-arg]  # of (event ts, offset, amount, currency)
    """A customer's payments sorted by event time, as :class:`tables.seen.SeenIds` keeps
    them: the rules over time find their time range by bisection instead of scanning
    every payment (one customer with 50,000 payments in the dedupe window cost 8.8 ms a
    payment when scanned)."""

    __slots__ = ("_by_amount",)

    def __init__(self, entries: Iterable[tuple[float, int, int, str]] = ()) -> None:
        super().__init__(entries)
        # currency -> the same entries sorted by amount, built on first use
        self._by_amount: dict[str, list[tuple[float, int, int, str]]] | None = None

    def add(self, entry: tuple[float, int, int, str]) -> None:
        if not self or entry >= self[-1]:
            self.append(entry)  # the common case: in event-time order
        else:
            bisect.insort(self, entry)
        if self._by_amount is not None:
            bisect.insort(self._by_amount.setdefault(entry[3], []), entry, key=_AMOUNT)

    def amounts(self, currency: str, low: float, high: float,
                ) -> Iterable[tuple[float, int, int, str]]:
        """The entries in ``currency`` with ``low <= amount < high``, found by bisection
        in an index by amount (references to the same entries: 8 bytes each)."""
        if self._by_amount is None:
            index: dict[str, list[tuple[float, int, int, str]]] = {}
            for entry in self:
                index.setdefault(entry[3], []).append(entry)
            for entries in index.values():
                entries.sort(key=_AMOUNT)
            self._by_amount = index
        found = self._by_amount.get(currency)
        if not found:
            return ()
        first = bisect.bisect_left(found, low, key=_AMOUNT)
        end = bisect.bisect_left(found, high, key=_AMOUNT)
        return (found[i] for i in range(first, end))

    def between(self, low: float, high: float) -> Iterable[tuple[float, int, int, str]]:
        return (self[i] for i in self.span(low, high))

    def span(self, low: float, high: float) -> range:
        """Indexes of the entries with ``low <= event ts <= high``."""
        return range(bisect.bisect_left(self, (low,)),
                     bisect.bisect_right(self, (high, math.inf)))


_AMOUNT = itemgetter(2)


def time_range(history: Sequence[Entry] | PaymentHistory, low: float,
               high: float) -> Iterable[Entry]:
    """The entries of ``history`` that may lie within ``[low, high]``: found by its
    ``between`` (:class:`PaymentHistory`), else every entry of the sequence (callers
    still check)."""
    between = getattr(history, "between", None)
    if between is not None:
        return cast(Iterable[Entry], between(low, high))
    return cast(Sequence[Entry], history)


@dataclass(frozen=True, slots=True)
class MetricDef:
    """One metric an extractor can emit."""

    name: str
    type: MetricType
    bounds: tuple[float, ...] = ()  # histogram bucket upper bounds


class MetricExtractor(ABC):
    """Turns a payment into ``(metric name, value)`` pairs.

    Subclasses set ``kind`` (the name used in configuration), read their
    parameters in ``__init__`` (raise :class:`MetricsConfigError` on bad
    ones), declare what they emit in :meth:`definitions`, and implement
    :meth:`extract`. ``history`` gives the customer's earlier payments (for
    rules over time such as velocity).
    """

    kind: ClassVar[str]
    is_rule: ClassVar[bool] = False  # a compliance rule (configured in compliance:rules:v1)

    def __init__(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)

    @abstractmethod
    def definitions(self) -> list[MetricDef]: ...

    @abstractmethod
    def extract(self, tx: ParsedTransaction, offset: int,
                history: History) -> Sequence[tuple[str, float]]:
        """The payment's ``(metric name, value)`` pairs: a tuple or list, not a generator,
        in the order of :meth:`definitions` (the columnar path orders a batch's metrics
        that way, so the window values' keys come out in the same order)."""

    def extract_columns(self, cols: PaymentColumns) -> list[Column] | None:
        """The kernel: what :meth:`extract` gives, for every payment of a batch at once,
        as ``(metric name, values, present)`` columns (``present`` None: every payment
        has the metric). Values are int64 where :meth:`extract` gives ints, float64
        where it gives floats. None (the default): no kernel, the engine calls
        :meth:`extract` per payment."""
        return None


EXTRACTORS: dict[str, type[MetricExtractor]] = {}


def register(cls: type[MetricExtractor]) -> type[MetricExtractor]:
    """Class decorator: make an extractor available to configuration under ``cls.kind``."""
    EXTRACTORS[cls.kind] = cls
    return cls


def _param(params: Mapping[str, Any], name: str, kind: type | tuple[type, ...],
           where: str, default: Any = ...) -> Any:
    if name not in params:
        if default is ...:
            raise MetricsConfigError(f"{where}: missing parameter {name!r}")
        return default
    value = params[name]
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        raise MetricsConfigError(f"{where}: parameter {name!r} is {value!r}, "
                                 f"expected {getattr(kind, '__name__', kind)}")
    return value


def _buckets(params: Mapping[str, Any], where: str) -> tuple[float, ...]:
    """The ``buckets`` parameter: strictly increasing upper bounds."""
    try:
        return check_bounds(_param(params, "buckets", list, where))
    except ValueError as exc:
        raise MetricsConfigError(f"{where}: buckets: {exc}") from None


@register
class StatusExtractor(MetricExtractor):
    """``transactions`` (1 per payment) and ``transactions_<status>``."""

    kind = "status"

    def definitions(self) -> list[MetricDef]:
        return [MetricDef("transactions", MetricType.COUNTER)] + [
            MetricDef(f"transactions_{s}", MetricType.COUNTER) for s in STATUSES]

    def extract(self, tx, offset, history):
        return (("transactions", 1), (f"transactions_{tx.status.value}", 1))

    def extract_columns(self, cols):
        n = len(cols)
        return [("transactions", ones(n), None)] + [
            (f"transactions_{s}", ones(n), cols.status == code)
            for s, code in STATUS_CODES.items()]


@register
class AmountExtractor(MetricExtractor):
    """``amount_minor`` histogram (per currency: amounts of different currencies never mix)
    and ``amount_major`` gauge (minor units divided by the currency's exponent)."""

    kind = "amount"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        where = "extractor 'amount'"
        self.bounds = _buckets(params, where)
        exponents = _param(params, "currency_exponents", dict, where, {})
        self.default_exponent = _param(params, "default_exponent", int, where, 2)
        self.divisors = {str(k): 10 ** int(v) for k, v in exponents.items()}

    def definitions(self) -> list[MetricDef]:
        return [MetricDef("amount_minor", MetricType.HISTOGRAM, self.bounds),
                MetricDef("amount_major", MetricType.GAUGE)]

    def extract(self, tx, offset, history):
        divisor = self.divisors.get(tx.currency, 10 ** self.default_exponent)
        return (("amount_minor", tx.amount_minor), ("amount_major", tx.amount_minor / divisor))

    def extract_columns(self, cols):
        codes, currencies = cols.codes("currency")
        default = 10 ** self.default_exponent
        divisors = [self.divisors.get(c, default) for c in currencies]
        amounts = cols.amount_minor
        # int / int is the correctly rounded quotient; so is float64 / float64 when both
        # convert exactly (the schema bounds amounts far below 2**53)
        if any(d > EXACT_FLOAT_INT for d in divisors) or (
                len(amounts) and int(np.abs(amounts).max()) > EXACT_FLOAT_INT):
            return None
        major = amounts / np.array(divisors, np.float64)[codes] if divisors else \
            np.zeros(0, np.float64)
        return [("amount_minor", amounts, None), ("amount_major", major, None)]


@register
class ChannelFailureExtractor(MetricExtractor):
    """``failure`` rate: 1 when the status is one of ``failure_statuses``."""

    kind = "channel_failure"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        statuses = _param(params, "failure_statuses", list, "extractor 'channel_failure'",
                          ["failed"])
        unknown = set(statuses) - set(STATUSES)
        if unknown:
            raise MetricsConfigError(f"extractor 'channel_failure': unknown status "
                                     f"{sorted(unknown)[0]!r}")
        self.failures = frozenset(statuses)

    def definitions(self) -> list[MetricDef]:
        return [MetricDef("failure", MetricType.RATE)]

    def extract(self, tx, offset, history):
        return (("failure", 1 if tx.status.value in self.failures else 0),)

    def extract_columns(self, cols):
        return [("failure", flag(status_is(cols, *self.failures)), None)]


@register
class DeclineCodeExtractor(MetricExtractor):
    """``decline_soft`` and ``decline_hard`` rates. Soft declines (e.g. 51 insufficient
    funds) may succeed on retry; every other decline code is hard."""

    kind = "decline_codes"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.soft = frozenset(str(c) for c in _param(params, "soft_codes", list,
                                                     "extractor 'decline_codes'"))

    def definitions(self) -> list[MetricDef]:
        return [MetricDef("decline_soft", MetricType.RATE),
                MetricDef("decline_hard", MetricType.RATE)]

    def extract(self, tx, offset, history):
        if tx.status.value != "declined":
            return (("decline_soft", 0), ("decline_hard", 0))
        soft = tx.decline_code in self.soft
        return (("decline_soft", 1 if soft else 0), ("decline_hard", 0 if soft else 1))

    def extract_columns(self, cols):
        declined = status_is(cols, "declined")
        soft = declined & member(cols, "decline_code", self.soft)
        return [("decline_soft", flag(soft), None),
                ("decline_hard", flag(declined & ~soft), None)]


@register
class LatencyExtractor(MetricExtractor):
    """``processing_ms`` histogram: the gateway's processing time."""

    kind = "processing_latency"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.bounds = _buckets(params, "extractor 'processing_latency'")

    def definitions(self) -> list[MetricDef]:
        return [MetricDef("processing_ms", MetricType.HISTOGRAM, self.bounds)]

    def extract(self, tx, offset, history):
        return (("processing_ms", tx.processing_ms),)

    def extract_columns(self, cols):
        return [("processing_ms", cols.processing_ms, None)]


@register
class ApprovalExtractor(MetricExtractor):
    """``approval`` rate (approved among all payments) and ``authorization`` rate
    (approved among approved and declined: payments the issuer decided on)."""

    kind = "approval"

    def definitions(self) -> list[MetricDef]:
        return [MetricDef("approval", MetricType.RATE),
                MetricDef("authorization", MetricType.RATE)]

    def extract(self, tx, offset, history):
        status = tx.status.value
        if status == "approved":
            return (("approval", 1), ("authorization", 1))
        if status == "declined":
            return (("approval", 0), ("authorization", 0))
        return (("approval", 0),)

    def extract_columns(self, cols):
        approved = status_is(cols, "approved")
        return [("approval", flag(approved), None),
                ("authorization", flag(approved), approved | status_is(cols, "declined"))]


@register
class RiskScoreExtractor(MetricExtractor):
    """``risk_score`` histogram, for payments that carry one."""

    kind = "risk_score"

    def __init__(self, params: Mapping[str, Any]) -> None:
        super().__init__(params)
        self.bounds = _buckets(params, "extractor 'risk_score'")

    def definitions(self) -> list[MetricDef]:
        return [MetricDef("risk_score", MetricType.HISTOGRAM, self.bounds)]

    def extract(self, tx, offset, history):
        return (("risk_score", tx.risk_score),) if tx.risk_score is not None else ()

    def extract_columns(self, cols):
        return [("risk_score", cols.risk_score, cols.has_risk)]


# -- the engine ---------------------------------------------------------------------------

Dimension = tuple[str, ...]


class _Labels(dict):
    """Dimension strings by field value(s), made on first use (a C-level lookup after)."""

    def __init__(self, fields: Dimension) -> None:
        super().__init__()
        self.fields = fields

    def __missing__(self, key: Any) -> str:
        values = key if len(self.fields) > 1 else (key,)
        text = self[key] = ",".join(f"{n}={v}" for n, v in zip(self.fields, values, strict=True))
        return text


def _dimensions_function(dims: Sequence[Dimension]) -> Callable[[ParsedTransaction], list[str]]:
    """One function giving all dimension strings of a payment (generated once, like a
    compiled validator: one call per payment instead of one per dimension)."""
    namespace: dict[str, Any] = {}
    items = []
    for i, fields in enumerate(dims):
        for name in fields:
            if name not in DIMENSION_FIELDS:  # also what makes the generated code safe
                raise MetricsConfigError(f"unknown dimension field {name!r}")
        if not fields:
            items.append('""')
            continue
        namespace[f"L{i}"] = _Labels(fields)
        key = ", ".join(f"tx.{n}" for n in fields)
        items.append(f"L{i}[{key}]" if len(fields) == 1 else f"L{i}[({key})]")
    source = f"def dimensions(tx):\n    return [{', '.join(items)}]\n"
    exec(compile(source, "<metric dimensions>", "exec"), namespace)  # noqa: S102
    return namespace["dimensions"]


@dataclass(slots=True)
class _Compiled:
    extractor: MetricExtractor
    name: str
    emits: dict[str, MetricInfo]  # by metric name


def _customer_scope(extractor: MetricExtractor) -> bool:
    return bool(getattr(extractor, "customer_scope", False))


class MetricEngine:
    """Compiled metric definitions: ``extract(tx)`` gives every metric of a payment."""

    def __init__(self, extractors: Sequence[tuple[MetricExtractor, Sequence[Dimension]]],
                 windowed_fields: Iterable[str], version: str = "files") -> None:
        self.version = version
        self.windowed_fields = frozenset(windowed_fields)
        dims: list[Dimension] = []
        self.definitions: dict[str, MetricDef] = {}
        self._compiled: list[_Compiled] = []
        self._infos: list[MetricInfo] = []
        for extractor, dimensions in extractors:
            emits: dict[str, MetricInfo] = {}
            slots = []
            for dim in dimensions:
                if dim not in dims:
                    dims.append(dim)
                slots.append((dims.index(dim), set(dim) <= self.windowed_fields))
            for d in extractor.definitions():
                # a gauge is a per-payment reading: its window aggregate would repeat the
                # histogram of the same value (amount_major is amount_minor rescaled)
                windowed = [(i, w and d.type != MetricType.GAUGE) for i, w in slots]
                if d.name in self.definitions:
                    raise MetricsConfigError(f"metric {d.name!r} is defined twice (extractor "
                                             f"{extractor.kind!r})")
                self.definitions[d.name] = d
                info = MetricInfo(d.name, d.type, windowed, len(self._infos), extractor.is_rule)
                self._infos.append(info)
                emits[d.name] = info
            self._compiled.append(_Compiled(extractor, extractor.kind, emits))
        self.dimensions = dims
        self._dimensions = _dimensions_function(dims)
        self._calls = [(c.extractor.extract, c.emits, c.name,
                        getattr(c.extractor, "evidence", None) if c.extractor.is_rule
                        else None)
                       for c in self._compiled if not _customer_scope(c.extractor)]
        # judged per customer when payments are stored (storage.customer_rules)
        self.customer_rules = tuple(c.extractor for c in self._compiled
                                    if _customer_scope(c.extractor))
        # dimension indices that some metric is windowed on: their values pick the plan
        window_dims = sorted({i for info in self._infos for i in info.windowed})
        self._signature: Callable[[list[str]], Any] = (
            itemgetter(*window_dims) if window_dims else (lambda dims: ()))
        self._plans: dict[tuple[str, ...], WindowPlan] = {}
        self._shapes: dict[Any, Any] = {}  # BatchMetrics.shapes of every batch

    def _plan(self, dims: list[str]) -> WindowPlan:
        signature = self._signature(dims)
        plan = self._plans.get(signature)
        if plan is None:
            plan = self._plans[signature] = [
                tuple(f"{info.name}|{dims[i]}" for i in info.windowed) for info in self._infos]
        return plan

    @property
    def extractors(self) -> list[MetricExtractor]:
        """The compiled extractors and rules, in configuration order (metrics first)."""
        return [c.extractor for c in self._compiled]

    def bounds(self, name: str) -> tuple[float, ...]:
        """Bucket bounds of a metric's windowed aggregate (empty: count, sum, min, max)."""
        d = self.definitions.get(name)
        return d.bounds if d is not None else ()

    def extract(self, tx: ParsedTransaction, offset: int = -1,
                history: History = no_history) -> ExtractionResult:
        emitted: list[tuple[MetricInfo, float]] = []
        errors: list[ExtractorError] | None = None
        evidence: dict[str, dict[str, Any]] | None = None
        append = emitted.append
        for extract, emits, kind, explain in self._calls:
            try:
                pairs = extract(tx, offset, history)
                if len(pairs) == 1:
                    name, value = pairs[0]
                    append((emits[name], value))
                    if explain is not None and value == 1:  # a rule flagged it: say why
                        if evidence is None:
                            evidence = {}
                        evidence[kind] = explain(tx, offset, history)
                else:
                    emitted += [(emits[name], value) for name, value in pairs]
            except Exception as exc:  # noqa: BLE001 - one extractor must not sink the rest
                if errors is None:
                    errors = []
                errors.append(ExtractorError(kind, f"{type(exc).__name__}: {exc}"))
        dims = self._dimensions(tx)
        return ExtractionResult(dims, emitted, errors or [], self._plan(dims), evidence)


    def extract_batch(self, cols: PaymentColumns, history: History = no_history,
                      ) -> BatchMetrics:
        """Every metric of every payment of a batch (:class:`BatchMetrics`): the same
        values, errors and evidence as :meth:`extract` per payment, from each
        extractor's kernel (:meth:`MetricExtractor.extract_columns`); an extractor with
        none, or whose kernel raises, is called per payment."""
        out = BatchMetrics(cols, self._infos, self._shapes)
        if len(self._shapes) > MAX_SHAPES:
            self._shapes.clear()
        offsets = cols.offsets.tolist()
        for c in self._compiled:
            if _customer_scope(c.extractor):
                continue
            try:
                columns = c.extractor.extract_columns(cols)
            except Exception:  # noqa: BLE001 - the per-payment calls say which payment
                columns = None
            if columns is None:
                self._extract_each(c, out, offsets, history)
                continue
            for name, values, present in columns:
                info = c.emits[name]
                out.values[info.index], out.present[info.index] = values, present
            if c.extractor.is_rule:
                self._explain(c, out, offsets, history)
        for index in sorted({i for info in self._infos for i in info.windowed}):
            out.windowed[index] = self._dimension_codes(cols, self.dimensions[index])
        return out

    def _extract_each(self, c: _Compiled, out: BatchMetrics, offsets: list[int],
                      history: History) -> None:
        """An extractor without a kernel: :meth:`extract`'s loop over its payments."""
        n = len(offsets)
        values = {info.index: np.empty(n, object) for info in c.emits.values()}
        present = {info.index: np.zeros(n, np.bool_) for info in c.emits.values()}
        explain = getattr(c.extractor, "evidence", None) if c.extractor.is_rule else None
        for i, (tx, offset) in enumerate(zip(out.cols.payments, offsets, strict=True)):
            try:
                pairs = c.extractor.extract(tx, offset, history)
                found = [(c.emits[name].index, value) for name, value in pairs]
                for index, value in found:
                    values[index][i], present[index][i] = value, True
                if explain is not None and len(found) == 1 and found[0][1] == 1:
                    out.evidence.setdefault(i, {})[c.name] = explain(tx, offset, history)
            except Exception as exc:  # noqa: BLE001 - as in extract
                out.errors.append((i, ExtractorError(c.name, f"{type(exc).__name__}: {exc}")))
        for index in values:
            out.values[index], out.present[index] = values[index], present[index]

    def _explain(self, c: _Compiled, out: BatchMetrics, offsets: list[int],
                 history: History) -> None:
        """The evidence of the payments a rule's kernel flagged (a rule emits one metric)."""
        explain = getattr(c.extractor, "evidence", None)
        if explain is None or len(c.emits) != 1:
            return
        info = next(iter(c.emits.values()))
        values = out.values[info.index]
        assert values is not None  # noqa: S101 - the kernel just set it
        for i in np.flatnonzero((values == 1) & out.has(info)).tolist():
            tx = out.cols.payments[i]
            try:
                out.evidence.setdefault(i, {})[c.name] = explain(tx, offsets[i], history)
            except Exception as exc:  # noqa: BLE001 - as in extract: the metric stays
                out.errors.append((i, ExtractorError(c.name, f"{type(exc).__name__}: {exc}")))

    @staticmethod
    def _dimension_codes(cols: PaymentColumns, fields: Dimension,
                         ) -> tuple[np.ndarray, list[str]]:
        """Each payment's code into the distinct dimension strings of ``fields``."""
        n = len(cols)
        if not fields:
            return np.zeros(n, np.int64), [""]
        if len(fields) == 1:  # factorize's codes are already dense, in order of arrival
            codes, values = cols.codes(fields[0])
            return codes, [f"{fields[0]}={v}" for v in values]
        code = np.zeros(n, np.int64)
        parts = []
        span = 1  # how many codes the fields' combinations may take
        for name in fields:
            codes, values = cols.codes(name)
            code = code * max(len(values), 1) + codes
            span *= max(len(values), 1)
            parts.append(values)
        if span <= 4 * n + 1024:  # np.unique's sort was most of a small batch's cost
            seen = np.zeros(span, np.bool_)
            seen[code] = True
            uniq = np.flatnonzero(seen)
            inverse = (np.cumsum(seen) - 1)[code]
        else:
            uniq, inverse = np.unique(code, return_inverse=True)
        labels = []
        for value in uniq.tolist():
            names = []
            for values in reversed(parts):
                value, at = divmod(value, max(len(values), 1))
                names.append(values[at])
            labels.append(",".join(f"{n}={v}" for n, v in
                                   zip(fields, reversed(names), strict=True)))
        return inverse.reshape(n), labels


# -- configuration ------------------------------------------------------------------------


def _dimensions(raw: Any, where: str) -> list[Dimension]:
    if not isinstance(raw, list) or not raw:
        raise MetricsConfigError(f"{where}: 'dimensions' must be a non-empty list of field "
                                 f"lists, e.g. [[], [channel]]")
    out = []
    for i, dim in enumerate(raw):
        if not isinstance(dim, list):
            raise MetricsConfigError(f"{where}: dimensions[{i}] is {dim!r}, not a list of fields")
        for name in dim:
            if name not in DIMENSION_FIELDS:
                raise MetricsConfigError(
                    f"{where}: dimensions[{i}] names unknown field {name!r} "
                    f"(known: {', '.join(DIMENSION_FIELDS)})")
        out.append(tuple(dim))
    return out


def build_extractors(entries: Any, key: str, *, kind_key: str = "extractor",
                     list_name: str = "extractors", default_dimensions: Any = None,
                     ) -> list[tuple[MetricExtractor, list[Dimension]]]:
    """Extractor instances from a list of ``{<kind_key>: kind, dimensions: [...], ...}``."""
    if not isinstance(entries, list):
        raise MetricsConfigError(f"{key}: {list_name!r} must be a list")
    out = []
    for i, entry in enumerate(entries):
        where = f"{key}: {list_name}[{i}]"
        if not isinstance(entry, dict) or kind_key not in entry:
            raise MetricsConfigError(f"{where}: expected a mapping with {kind_key!r}")
        kind = entry[kind_key]
        cls = EXTRACTORS.get(kind)
        rules = kind_key == "rule"
        if cls is None or cls.is_rule != rules:
            known = sorted(k for k, c in EXTRACTORS.items() if c.is_rule == rules)
            raise MetricsConfigError(f"{where}: unknown {kind_key} {kind!r} "
                                     f"(known: {', '.join(known)})")
        dims = _dimensions(entry.get("dimensions", default_dimensions), f"{where} ({kind})")
        params = {k: v for k, v in entry.items() if k not in (kind_key, "dimensions")}
        try:
            extractor = cls(params)
        except MetricsConfigError as exc:
            raise MetricsConfigError(f"{where}: {exc}") from None
        out.append((extractor, dims))
    return out
