"""Bytes in, a :class:`~models.events.ParseResult` out: parse, schema, rules.

Pure code: no Faust, no I/O after start-up. :class:`Validator` is built once
from ``config/validation.yaml`` (schema file, mode, rules) and then called for
every message. It never raises for bad input; every message ends as exactly one
of accepted or failed, with the raw bytes kept as received.

The order of checks, each with its own error category (docs/errors.md):
size (``too_large``), UTF-8 and Unicode (``not_utf8``: also a string that escapes a
lone surrogate, ``"\\ud800"``, which no UTF-8 text can hold), JSON (``not_json``), object
(``not_object``), JSON Schema and typed conversion (``schema``), rules
(``rule``). Duplicates (``duplicate``) need state and are found by the ingest
agent.

Valid messages take a fast path: one msgspec decode against a Struct compiled
from the schema (:mod:`pipeline.schema`). Anything it rejects is re-checked by
the authoritative validator, which explains the failure.
"""

from __future__ import annotations

import json
import operator
import re
import time
from bisect import bisect_left
from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from itertools import accumulate
from types import SimpleNamespace
from typing import Any, cast

import msgspec
import numpy as np
import orjson

from models.errors import PaymentMonitorError
from models.events import (
    ErrorCategory,
    ParsedTransaction,
    ParseResult,
    TransactionStatus,
    ValidationError,
    short_repr,
)
from pipeline.regex import SEPARATOR
from pipeline.rules import Rule, RuleContext
from pipeline.schema import SchemaChecker, batch_patterns, compile_fast, untrusted_patterns

MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB, from the wire format contract
_INTEGER_FIELDS = ("amount_minor", "processing_ms")
_STATUSES = {s.value: s for s in TransactionStatus}
_TRANSACTION_FIELDS = tuple(ParsedTransaction.__struct_fields__)


class Mode(StrEnum):
    FAIL_FAST = "fail_fast"  # stop at the first error: the hot path
    COLLECT_ALL = "collect_all"  # every schema and rule error: diagnostics and replay


class Validator:
    """Parses and validates message values; build once, call for every message."""

    def __init__(self, schema: dict[str, Any], rules: Sequence[Rule] = (),
                 mode: Mode = Mode.FAIL_FAST, *, fast_path: bool = True) -> None:
        self.schema = schema
        self.rules = list(rules)
        self.mode = Mode(mode)
        self.checker = SchemaChecker(schema)
        self.fast = compile_fast(schema) if fast_path else None
        self._patterns = untrusted_patterns(schema)  # RE2, after the fast decode
        # the contract's patterns, over the batch after the decode
        self._batched = [(operator.attrgetter(name), whole, one)
                         for name, whole, one in batch_patterns(schema)] if self.fast else []
        # the duplicate-key check's counts: required fields are always there; optional
        # ones (and object-valued fields' own keys) are counted per message
        properties = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        self._required = len(required & set(properties))
        optional = [name for name in properties if name not in required]
        self._optional = operator.attrgetter(*optional, "__class__") if optional else None
        self._maps = tuple(name for name, spec in properties.items()
                           if "object" in _types(spec))

    def with_mode(self, mode: Mode) -> Validator:
        clone = object.__new__(Validator)
        clone.__dict__.update(self.__dict__)
        clone.mode = Mode(mode)
        return clone

    def parse(self, raw: bytes | None, received_at: float | datetime | None = None) -> ParseResult:
        """Parse one message value.

        ``received_at`` is the record's broker timestamp (POSIX seconds or an aware
        datetime); rules compare event time with it, so a replay of the same
        record gets the same verdict. The wall clock when not given.
        """
        raw = b"" if raw is None else raw
        if received_at is None:
            received_at = time.time()
        elif isinstance(received_at, datetime):
            received_at = received_at.timestamp()
        ctx = RuleContext(received_at)
        tx = self._fast_typed(raw)
        if tx is not None:
            return self._apply_rules(raw, tx, ctx)
        return self._parse_slow(raw, ctx)

    def parse_many(self, raws: Sequence[bytes | None],
                   received: Sequence[float]) -> list[ParseResult]:
        """:meth:`parse` of each message, with ``received`` its record time (POSIX
        seconds): the same results. The fast decode and its checks run in one loop
        (:meth:`_decode_many`), the typed payments are made for the whole batch
        (:func:`_from_structs`), and the rules run over the batch's payments at once
        (:meth:`~pipeline.rules.Rule.passes`), one message at a time only for the
        payments a kernel did not clear, or for every one when a rule has no kernel."""
        if self.fast is None:
            return [self.parse(raw, at) for raw, at in zip(raws, received, strict=True)]
        out: list[ParseResult | None] = [None] * len(raws)
        fasts, where, slow = self._decode_many(raws)
        typed = _from_structs(fasts)
        if None in typed:  # a date the pattern let through (the 30th of February)
            slow += [i for i, tx in zip(where, typed, strict=True) if tx is None]
            where = [i for i, tx in zip(where, typed, strict=True) if tx is not None]
            typed = [tx for tx in typed if tx is not None]
        txs = cast(list[ParsedTransaction], typed)
        for i in slow:
            out[i] = self._parse_slow(raws[i] or b"", RuleContext(received[i]))
        if txs:
            at = np.fromiter((received[i] for i in where), np.float64, len(where))
            cleared = np.ones(len(txs), np.bool_)
            for rule in self.rules:
                passes = rule.passes(txs, at)
                if passes is None:
                    cleared[:] = False
                    break
                cleared &= passes
            for i, tx, ok in zip(where, txs, cleared.tolist(), strict=True):
                raw = raws[i] or b""
                out[i] = (ParseResult(raw, transaction=tx) if ok
                          else self._apply_rules(raw, tx, RuleContext(received[i])))
        return cast(list[ParseResult], out)

    def _fast_typed(self, raw: bytes) -> ParsedTransaction | None:
        """The typed payment when the fast path can decide that ``raw`` passes the schema,
        else None (the authoritative path decides and explains)."""
        fasts, _, _ = self._decode_many((raw,))
        return _from_structs(fasts)[0] if fasts else None

    def _decode_many(self, raws: Sequence[bytes | None]) -> tuple[list[Any], list[int], list[int]]:
        """The fast decode of each message that it can decide passes the schema, their
        positions, and the positions of the others (the authoritative path decides and
        explains those). One loop with nothing called but the decoder and the checks:
        this runs for every message."""
        if self.fast is None:
            return [], [], list(range(len(raws)))
        decode = self.fast.decode
        keys = self._keys
        patterns = self._patterns
        fasts: list[Any] = []
        where: list[int] = []
        slow: list[int] = []
        for i, raw in enumerate(raws):
            if raw is None or len(raw) > MAX_MESSAGE_BYTES:
                slow.append(i)
                continue
            try:
                fast = decode(raw)
            except (msgspec.MsgspecError, ValueError, RecursionError):
                slow.append(i)
                continue
            # A JSON object may repeat a key, and every decoder keeps the last value
            # (amount_minor 1, then 999999999). Each key is followed by '":', so when that
            # count equals the keys decoded there is no repeat; otherwise (a repeat, or
            # only spacing or an escaped quote) the slow path decides. No backslash: no
            # escaped NUL.
            if ((b"\\" in raw and b"\\u0000" in raw) or raw.count(b'":') != keys(fast)
                    or (patterns and not self._match_patterns(fast))):
                slow.append(i)
                continue
            fasts.append(fast)
            where.append(i)
        missed = self._batch_misses(fasts)
        if missed:
            slow += [where[k] for k in missed]
            fasts = [fast for k, fast in enumerate(fasts) if k not in missed]
            where = [i for k, i in enumerate(where) if k not in missed]
        return fasts, where, slow

    def _batch_misses(self, fasts: Sequence[Any]) -> set[int]:
        """The indexes of the decoded messages whose value a batched pattern does not
        match: one match for all of a field's values when they all match, one more for
        each that does not (:func:`~pipeline.regex.batched`); each value on its own when
        one holds the separator."""
        missed: set[int] = set()
        for get, whole, one in self._batched:
            values = list(map(get, fasts))
            at: list[int] | None = None  # where each text is, when some value is not one
            try:
                joined = SEPARATOR.join(values)
            except TypeError:  # an absent or null value: the pattern is not for those
                at = [k for k, value in enumerate(values) if type(value) is str]
                values = [values[k] for k in at]
                joined = SEPARATOR.join(values)
            if not values:
                continue
            joined += SEPARATOR
            if joined.count(SEPARATOR) != len(values):
                failed = [k for k, value in enumerate(values) if not one.search(value)]
            else:
                failed = _unmatched(whole, joined, values)
            missed.update(failed if at is None else (at[k] for k in failed))
        return missed

    def _match_patterns(self, fast: Any) -> bool:
        for name, regex in self._patterns:
            value = getattr(fast, name)
            if type(value) is str and not regex.search(value):
                return False
        return True

    def _keys(self, fast: Any) -> int:
        """How many keys the decoded message has, its objects' keys included."""
        n = self._required
        if self._optional is not None:
            values = self._optional(fast)  # "__class__" last: always a tuple
            n += len(values) - 1 - values.count(msgspec.UNSET)
        for name in self._maps:
            value = getattr(fast, name)
            if type(value) is dict:
                n += len(value)
        return n

    def _parse_slow(self, raw: bytes, ctx: RuleContext) -> ParseResult:
        obj_or_failure = _decode(raw)
        if isinstance(obj_or_failure, ParseResult):
            return obj_or_failure
        obj = obj_or_failure
        repeated = _repeated_key(raw)
        if repeated is not None:
            return _fail(raw, ErrorCategory.SCHEMA,
                         f"{repeated} appears more than once (an object's keys must be unique; "
                         "decoders would keep only the last value)", "unique_keys", repeated)
        if self.mode is Mode.FAIL_FAST:
            first = self.checker.first_error(obj) or _extra_checks(obj, raw)
            if first is not None:
                return ParseResult(raw, category=ErrorCategory.SCHEMA, errors=(first,))
        else:
            errors = self.checker.all_errors(obj)
            if not errors:
                extra = _extra_checks(obj, raw)
                errors = [extra] if extra else []
            if errors:
                rule_errors = [e for rule in self.rules if rule.applies(obj)
                               if (e := rule.check(obj, ctx)) is not None]
                return ParseResult(raw, category=ErrorCategory.SCHEMA,
                                   errors=tuple(errors + rule_errors))
        return self._apply_rules(raw, _typed(obj), ctx)

    def _apply_rules(self, raw: bytes, tx: ParsedTransaction, ctx: RuleContext) -> ParseResult:
        errors: list[ValidationError] = []
        for rule in self.rules:
            if not rule.when or rule.applies(tx):
                error = rule.check(tx, ctx)
                if error is not None:
                    errors.append(error)
                    if self.mode is Mode.FAIL_FAST:
                        break
        if errors:
            return ParseResult(raw, category=ErrorCategory.RULE, errors=tuple(errors))
        return ParseResult(raw, transaction=tx)


def _unmatched(whole: re.Pattern[str], joined: str, values: Sequence[str]) -> list[int]:
    """The indexes of the ``values`` (``joined``, each followed by the separator) that
    the batched pattern ``whole`` does not match."""
    end = whole.match(joined).end()  # type: ignore[union-attr]  # matches zero values
    if end == len(joined):
        return []
    starts = list(accumulate((len(v) + 1 for v in values), initial=0))  # each value's
    failed = []
    while end < len(joined):
        k = bisect_left(starts, end)  # the value starting there
        failed.append(k)
        end = whole.match(joined, starts[k + 1]).end()  # type: ignore[union-attr]
    return failed


def _fail(raw: bytes, category: ErrorCategory, message: str, rule: str,
          field: str | None = None, value: str | None = None) -> ParseResult:
    return ParseResult(raw, category=category,
                       errors=(ValidationError(field, rule, message, value),))


def _decode(raw: bytes) -> dict[str, Any] | ParseResult:
    if len(raw) > MAX_MESSAGE_BYTES:
        return _fail(raw, ErrorCategory.TOO_LARGE,
                     f"message is {len(raw)} bytes, over the limit of {MAX_MESSAGE_BYTES}",
                     "max_size")
    if not raw:
        return _fail(raw, ErrorCategory.NOT_JSON, "message is empty (no value)", "json")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return _fail(raw, ErrorCategory.NOT_UTF8,
                         f"message is not UTF-8: byte {uexc.start} is invalid", "utf8")
        try:
            # orjson refuses integers beyond 64 bits; the schema should name that field
            obj = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return _fail(raw, ErrorCategory.NOT_JSON, f"message is not JSON: {exc}", "json")
        # ... and lone surrogates, which json.loads lets through: a string holding one
        # cannot be encoded again (COPY, the DLQ record, the lake), so it ends here.
        where = _lone_surrogate(obj)
        if where is not None:
            return _fail(raw, ErrorCategory.NOT_UTF8,
                         f"message is not valid Unicode: {where} holds a lone surrogate "
                         "escape (\\ud800-\\udfff without its pair)", "utf8")
    if not isinstance(obj, dict):
        kind = "null" if obj is None else type(obj).__name__
        return _fail(raw, ErrorCategory.NOT_OBJECT,
                     f"message is a JSON {kind}, not an object", "type")
    return obj


def _extra_checks(obj: dict[str, Any], raw: bytes) -> ValidationError | None:
    """What the schema cannot say: strict integers, real dates, no NUL characters."""
    for name in _INTEGER_FIELDS:
        value = obj.get(name)
        if name in obj and type(value) is not int:  # JSON Schema counts 10.0 as an integer
            return ValidationError(name, "type", f"{name} must be an integer, not "
                                   f"{short_repr(value)}", short_repr(value))
    if "event_time" in obj:
        try:
            datetime.fromisoformat(obj["event_time"])
        except (TypeError, ValueError):
            value = short_repr(obj["event_time"])
            return ValidationError("event_time", "format",
                                   f"event_time is not a valid date: {value}", value)
    if b"\\u0000" in raw:  # JSON can carry NUL in a string; PostgreSQL text cannot store it
        field = _field_with_nul(obj)
        if field is not None:
            return ValidationError(field, "no_nul", f"{field} contains a NUL character (\\u0000)")
    return None


def _from_structs(structs: Sequence[Any]) -> list[ParsedTransaction | None]:
    """The typed transaction of each checked object: the fast path's Structs, or
    namespaces over decoded dicts (absent optional fields are ``UNSET``); None where the
    event time is not a real date. The times are converted for the whole list, and each
    payment is built with positional arguments (in :class:`ParsedTransaction`'s field
    order) and its ``event_ts`` given."""
    times = list(map(_EVENT_TIME, structs))
    try:
        dates: list[datetime | None] = list(map(datetime.fromisoformat, times))
        stamps = list(map(datetime.timestamp, dates))  # type: ignore[arg-type]  # no None
    except ValueError:  # one is not a real date: each on its own
        dates = list(map(_date_or_none, times))
        stamps = [0.0 if d is None else d.timestamp() for d in dates]
    unset = msgspec.UNSET
    statuses = _STATUSES
    return [None if when is None else ParsedTransaction(
        s.transaction_id, when, s.merchant_id, s.customer_id, s.amount_minor, s.currency,
        s.channel, s.payment_method, statuses[s.status],
        None if s.decline_code is unset else s.decline_code, s.country, s.processing_ms,
        None if s.card_bin is unset else s.card_bin,
        None if s.risk_score is unset or s.risk_score is None else float(s.risk_score),
        None if s.metadata is unset else s.metadata, ts)
        for s, when, ts in zip(structs, dates, stamps, strict=True)]


_EVENT_TIME = operator.attrgetter("event_time")


def _date_or_none(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def _typed(obj: dict[str, Any]) -> ParsedTransaction:
    tx = _from_structs([SimpleNamespace(**{name: obj.get(name, msgspec.UNSET)
                                           for name in _TRANSACTION_FIELDS})])[0]
    assert tx is not None, "event_time was checked before"  # noqa: S101
    return tx


def _field_with_nul(obj: dict[str, Any]) -> str | None:
    for name, value in obj.items():
        if isinstance(value, str) and "\x00" in value:
            return name
        if isinstance(value, dict):
            for key, inner in value.items():
                if "\x00" in key or (isinstance(inner, str) and "\x00" in inner):
                    return f"{name}.{key.replace(chr(0), '?')[:64]}"
    return None


def _types(spec: Any) -> list[str]:
    kind = spec.get("type") if isinstance(spec, dict) else None
    return [kind] if isinstance(kind, str) else list(kind or [])


class _RepeatedKey(PaymentMonitorError):  # noqa: N818 - internal signal, never escapes
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return out


def _repeated_key(raw: bytes) -> str | None:
    """The first key repeated in an object of ``raw`` (already decoded once), or None."""
    try:
        json.loads(raw, object_pairs_hook=_no_repeats, parse_constant=_reject_constant)
    except _RepeatedKey as found:
        return found.key[:64]
    except (ValueError, RecursionError):
        return None
    return None


def _lone_surrogate(obj: Any, path: str = "", depth: int = 0) -> str | None:
    """Where a string (a value, or a key) holds a lone surrogate: a dotted path, or
    None. Only the slow path's ``json.loads`` results need this walk."""
    if isinstance(obj, str):
        return None if _encodable(obj) else (path or "the message")
    if depth > 64:  # the schema refuses anything this deep anyway; keep the walk bounded
        return None
    if isinstance(obj, dict):
        for key, value in obj.items():
            name = f"{path}.{key[:64]}" if path else key[:64]
            if not _encodable(key):
                return f"a key in {path or 'the message'}"
            found = _lone_surrogate(value, name, depth + 1)
            if found is not None:
                return found
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found = _lone_surrogate(value, f"{path}[{i}]", depth + 1)
            if found is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")
