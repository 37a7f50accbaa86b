"""Validation rules that run after the schema, chosen and parameterised in config.

A rule is a small class with a ``check`` method, registered under a name with
:func:`register`; ``config/validation.yaml`` lists the rules to run, each as
``{rule: <name>, ...parameters}``. Every rule may carry ``when`` (a mapping of
field to value) and then applies only to transactions where all of those
fields have those values; that is how cross-field rules such as "a declined
payment needs a decline code" are written.

Rules read fields by dotted path (``metadata.note``) from the typed
transaction, or from the decoded object when the schema already failed (the
collect-all mode), and skip a field that is absent: presence is
:class:`RequiredRule`'s job.

A rule may also have a kernel, :meth:`Rule.passes`: over a batch's typed payments at
once, which of them it surely finds nothing wrong with. The worker runs the kernels
over each batch and ``check`` only for the payments a kernel did not clear, so the
verdicts and messages are ``check``'s whatever the kernel says.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from datetime import datetime
from itertools import repeat
from typing import Any, ClassVar

import msgspec
import numpy as np

from models.errors import PaymentMonitorError
from models.events import ParsedTransaction, ValidationError, short_repr
from pipeline.regex import SlowPattern, linear

MISSING: Any = object()
_FIELDS = frozenset(ParsedTransaction.__struct_fields__)  # what a kernel can read
_EVENT_TS = operator.attrgetter("event_ts")


class RuleConfigError(PaymentMonitorError, ValueError):
    """A rule in the validation config is unknown or badly parameterised."""


class RuleContext:
    """What a rule may know beyond the message: the record's broker timestamp."""

    __slots__ = ("received_ts",)

    def __init__(self, received_ts: float) -> None:
        self.received_ts = received_ts  # POSIX seconds


class Rule:
    """Base class: one check on one transaction; ``name`` is its config name."""

    name: ClassVar[str] = ""

    def __init__(self, field: str | None = None, when: Mapping[str, Any] | None = None) -> None:
        self.field = field
        self.when = dict(when or {})
        self._when = tuple(self.when.items())

    def applies(self, source: Any) -> bool:
        return all(lookup(source, path) == value for path, value in self._when)

    def check(self, source: Any, ctx: RuleContext) -> ValidationError | None:
        raise NotImplementedError

    def passes(self, txs: Sequence[ParsedTransaction], received: np.ndarray) -> np.ndarray | None:
        """A kernel: for each payment (``received``: each one's record time, POSIX
        seconds), True where :meth:`check` surely finds nothing wrong or the rule does
        not apply; False where :meth:`check` must decide. None: no kernel."""
        return None

    def _or_not_applying(self, ok: np.ndarray | None,
                         txs: Sequence[ParsedTransaction]) -> np.ndarray | None:
        """``ok``, and True too where :meth:`applies` is False; None where ``when`` reads
        more than a payment's own fields."""
        if ok is None or any(path not in _FIELDS for path, _ in self._when):
            return None
        for path, value in self._when:
            ok |= ~np.fromiter(map(operator.eq, map(operator.attrgetter(path), txs),
                                   repeat(value)), np.bool_, len(txs))
        return ok

    def error(self, message: str, value: Any = MISSING) -> ValidationError:
        return ValidationError(self.field, self.name, message,
                               None if value is MISSING else short_repr(value))

    def _condition(self) -> str:
        if not self.when:
            return ""
        return " when " + " and ".join(f"{k} is {v!r}" for k, v in self.when.items())


RULES: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    """Class decorator: make ``cls`` available to the config under ``cls.name``."""
    if not cls.name or cls.name in RULES:
        raise RuleConfigError(f"rule name {cls.name!r} is empty or taken")
    RULES[cls.name] = cls
    return cls


def lookup(source: Any, path: str) -> Any:
    """The value at a dotted path of a dict or an object, or ``MISSING``."""
    if "." not in path:
        if isinstance(source, msgspec.Struct):  # the typed payment: no Mapping ABC check
            return getattr(source, path, MISSING)
        if isinstance(source, Mapping):
            return source.get(path, MISSING)
        return getattr(source, path, MISSING)
    value = source
    for part in path.split("."):
        if isinstance(value, Mapping):
            value = value.get(part, MISSING)
        else:
            value = getattr(value, part, MISSING)
        if value is MISSING:
            return MISSING
    return value


@register
class RequiredRule(Rule):
    """The field is present and not null."""

    name = "required"

    def check(self, source: Any, ctx: RuleContext) -> ValidationError | None:
        if lookup(source, self.field or "") in (MISSING, None):
            return self.error(f"{self.field} is required{self._condition()}")
        return None

    def passes(self, txs: Sequence[ParsedTransaction], received: np.ndarray) -> np.ndarray | None:
        if self.field not in _FIELDS:
            return None
        values = map(operator.attrgetter(self.field), txs)
        return self._or_not_applying(
            np.fromiter(map(operator.is_not, values, repeat(None)), np.bool_, len(txs)), txs)


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
    "object": (Mapping,), "array": (list, tuple),
}


@register
class TypeRule(Rule):
    """The field has a JSON type: string, integer, number, boolean, object, array."""

    name = "type"

    def __init__(self, field: str, type: str, when: Mapping[str, Any] | None = None) -> None:  # noqa: A002
        super().__init__(field, when)
        if type not in _TYPES:
            raise RuleConfigError(f"type rule on {field}: unknown type {type!r}, "
                                  f"expected one of {sorted(_TYPES)}")
        self.type = type

    def check(self, source: Any, ctx: RuleContext) -> ValidationError | None:
        value = lookup(source, self.field or "")
        if value is MISSING or value is None:
            return None
        ok = isinstance(value, _TYPES[self.type])
        if isinstance(value, bool) and self.type != "boolean":
            ok = False
        if ok:
            return None
        return self.error(f"{self.field} must be of type {self.type}", value)


@register
class RangeRule(Rule):
    """A number within [min, max]; either bound may be left out."""

    name = "range"

    def __init__(self, field: str, min: float | None = None, max: float | None = None,  # noqa: A002
                 when: Mapping[str, Any] | None = None) -> None:
        super().__init__(field, when)
        if min is None and max is None:
            raise RuleConfigError(f"range rule on {field}: give min, max or both")
        self.min, self.max = min, max

    def check(self, source: Any, ctx: RuleContext) -> ValidationError | None:
        value = lookup(source, self.field or "")
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if self.min is not None and value < self.min:
            return self.error(f"{self.field} must be at least {self.min}{self._condition()} "
                              f"(got {short_repr(value)})", value)
        if self.max is not None and value > self.max:
            return self.error(f"{self.field} must be at most {self.max}{self._condition()} "
                              f"(got {short_repr(value)})", value)
        return None


@register
class PatternRule(Rule):
    """A string matching a regular expression in full."""

    name = "pattern"

    def __init__(self, field: str, pattern: str, when: Mapping[str, Any] | None = None) -> None:
        super().__init__(field, when)
        try:
            self.regex = linear(pattern)  # RE2: linear time, whatever the pattern
        except SlowPattern as exc:
            raise RuleConfigError(f"pattern rule on {field}: bad pattern: {exc}") from None

    def check(self, source: Any, ctx: RuleContext) -> ValidationError | None:
        value = lookup(source, self.field or "")
        if not isinstance(value, str) or self.regex.fullmatch(value):
            return None
        return self.error(f"{self.field} must match {self.regex.pattern}{self._condition()} "
                          f"(got {short_repr(value)})", value)


@register
class AllowedValuesRule(Rule):
    """The value is one of a list."""

    name = "allowed_values"

    def __init__(self, field: str, values: Sequence[Any],
                 when: Mapping[str, Any] | None = None) -> None:
        super().__init__(field, when)
        if not values:
            raise RuleConfigError(f"allowed_values rule on {field}: the list is empty")
        self.values = frozenset(values)
        self._shown = ", ".join(repr(v) for v in list(values)[:10])

    def check(self, source: Any, ctx: RuleContext) -> ValidationError | None:
        value = lookup(source, self.field or "")
        if value is MISSING or value is None or value in self.values:
            return None
        return self.error(f"{self.field} must be one of {self._shown}{self._condition()} "
                          f"(got {short_repr(value)})", value)


@register
class EventTimeSkewRule(Rule):
    """``event_time`` at most ``max_future_seconds`` after the broker received the message,
    and, when ``max_past_seconds`` is set, at most that long before it.

    The reference is the record's broker timestamp (range-checked:
    :func:`pipeline.records.record_time`), not the wall clock, so a replay of the same
    record gets the same verdict. Both bounds must be finite and the future one at most
    :data:`MAX_FUTURE_LIMIT_S`: ``.inf`` let any date through. The past bound is meant to
    be the retention of ``normalized_transactions``, so nothing is accepted only to be
    deleted by the next retention run.
    """

    name = "event_time_skew"
    MAX_FUTURE_LIMIT_S: ClassVar[float] = 3600.0

    def __init__(self, max_future_seconds: float = 120, field: str = "event_time",
                 when: Mapping[str, Any] | None = None,
                 max_past_seconds: float | None = None) -> None:
        super().__init__(field, when)
        self.max_future = _bounded_seconds("max_future_seconds", max_future_seconds,
                                           self.MAX_FUTURE_LIMIT_S)
        self.max_past = (None if max_past_seconds is None else
                         _bounded_seconds("max_past_seconds", max_past_seconds, 1e10))

    def passes(self, txs: Sequence[ParsedTransaction], received: np.ndarray) -> np.ndarray | None:
        if self.field != "event_time":
            return None
        # check's first test, on the same float64 values
        ahead = np.fromiter(map(_EVENT_TS, txs), np.float64, len(txs)) - received
        past = math.inf if self.max_past is None else self.max_past
        return self._or_not_applying((-past <= ahead) & (ahead <= self.max_future), txs)

    def check(self, source: Any, ctx: RuleContext) -> ValidationError | None:
        if self.field == "event_time" and type(source) is ParsedTransaction:
            ahead = source.event_ts - ctx.received_ts  # derived once, when it was typed
            past = math.inf if self.max_past is None else self.max_past
            if -past <= ahead <= self.max_future:
                return None
        value = lookup(source, self.field or "")
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return None  # the schema reports it
        if not isinstance(value, datetime):
            return None
        ahead = value.timestamp() - ctx.received_ts
        if ahead > self.max_future:
            return self.error(f"{self.field} is {ahead:.0f} s after the message was received "
                              f"(at most {self.max_future:.0f} s allowed)", value.isoformat())
        if self.max_past is not None and -ahead > self.max_past:
            return self.error(f"{self.field} is {-ahead:.0f} s before the message was "
                              f"received (at most {self.max_past:.0f} s allowed)",
                              value.isoformat())
        return None


def _bounded_seconds(name: str, value: Any, limit: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, not {short_repr(value)}")
    if not 0 <= value <= limit:  # also refuses NaN and infinities
        raise TypeError(f"{name} must be between 0 and {limit:.0f} s (got {value})")
    return float(value)


def build_rules(specs: Sequence[Mapping[str, Any]]) -> list[Rule]:
    """Rules from config entries such as ``{"rule": "range", "field": "x", "max": 5}``."""
    rules = []
    for i, spec in enumerate(specs):
        params = dict(spec)
        name = params.pop("rule", None)
        if name not in RULES:
            raise RuleConfigError(f"rules[{i}]: unknown rule {name!r}; "
                                  f"known: {', '.join(sorted(RULES))}")
        try:
            rules.append(RULES[name](**params))
        except TypeError as exc:
            raise RuleConfigError(f"rules[{i}] ({name}): {exc}") from exc
    return rules
