"""Regular expressions from configuration run on a linear-time engine (RE2).

A pushed validation rule or schema pattern is code that runs on every message, and
Python's ``re`` backtracks: ``^(a+)+$`` against forty ``a`` and a ``b`` stalled every
worker of the fleet (``/healthz`` timed out, nothing more was processed). RE2 answers in
time linear in the input, whatever the pattern, and refuses what needs backtracking
(backreferences, lookaround): such a pattern is refused when the configuration is
checked, before any worker sees it.

The contract's own patterns (``config/schemas/transaction-v1.json``, reviewed with the
code) are anchored character classes that ``re`` matches in linear time; they keep the
fast path, matched over a whole batch's values at once (:func:`batched`). The
google-re2 binding costs 5.5-6.9 us a call (0.26 us for a compiled ``re``), so only
patterns from elsewhere pay it (docs/adr/0009-hostile-input.md).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from typing import Any

import re2

from config import CONFIG_DIR
from models.errors import PaymentMonitorError


class SlowPattern(PaymentMonitorError, ValueError):
    """A pattern RE2 cannot run (it needs backtracking) or cannot compile."""


_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the refusal is ours to report, in one line


@functools.cache
def linear(pattern: str) -> Any:
    """``pattern`` compiled by RE2 (``search``, ``fullmatch`` like ``re``), or
    :class:`SlowPattern`."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        detail = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else exc
        raise SlowPattern(f"pattern {pattern[:100]!r} is refused: only patterns a "
                          f"linear-time engine (RE2) runs are allowed ({detail})") from None


@functools.cache
def trusted_patterns() -> frozenset[str]:
    """The contract schema's patterns, which run on Python's ``re``."""
    schema = json.loads((CONFIG_DIR / "schemas" / "transaction-v1.json").read_text())
    return frozenset(patterns(schema))


def patterns(node: Any) -> Iterator[str]:
    """Every ``pattern`` keyword's value in a JSON Schema, at any depth."""
    if isinstance(node, dict):
        if isinstance(node.get("pattern"), str):
            yield node["pattern"]
        for value in node.values():
            yield from patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from patterns(value)


# Joins a batch's values for one match of a batched pattern (batched): no batched
# pattern can match it, so each value must match on its own between two of them.
SEPARATOR = "\x1f"
_SAFE_ESCAPES = frozenset(".-_:/+*?()[]{}|^$\\d")


def batched(pattern: str) -> re.Pattern[str] | None:
    """``pattern`` (a JSON Schema pattern) over a whole batch at once, or None.

    Its ``match`` of ``v1 + SEPARATOR + v2 + SEPARATOR + ...`` (every value followed by
    the separator) from a value's start ends where the first value from there that does
    not match ``pattern`` starts (at the end: each one matched), provided no value holds
    the separator (the caller counts them). One match a batch costs a third of what a
    search a value costs, the call's overhead being most of it (``python -m
    benchmarks.parse``), and a value that does not match costs one more match.

    Only for patterns that cannot match the separator and whose every match is the whole
    value: anchored at both ends (``^...$``), no alternative outside a group, printable
    ASCII only, no ``.``, no negated class, no escape that could match a control
    character (``\\s``, ``\\W``, ``\\x1f``), no lookaround or flag group. Anything else
    is None: each value is then searched on its own."""
    if len(pattern) < 2 or pattern[0] != "^" or pattern[-1] != "$" or pattern[-2] == "\\":
        return None
    inner = pattern[1:-1]
    if not all(" " <= c <= "~" for c in inner) or not _separator_safe(inner):
        return None
    try:
        re.compile(inner)
    except re.error:
        return None
    # possessive: a value matched is never matched again another way
    return re.compile(f"(?:(?:{inner}){SEPARATOR})*+")


def _separator_safe(inner: str) -> bool:
    """True when ``inner`` (a pattern without its anchors) is built only of literals,
    positive classes, safe escapes, groups (``(...)``, ``(?:...)``) and quantifiers, with
    no ``|`` outside a group."""
    depth = 0
    in_class = False
    i = 0
    while i < len(inner):
        c = inner[i]
        if c == "\\":
            if inner[i + 1:i + 2] not in _SAFE_ESCAPES or i + 1 >= len(inner):
                return False
            i += 2
            continue
        if in_class:
            if c == "[":
                return False  # a nested set: refused rather than reasoned about
            in_class = c != "]"
        elif c == "[":
            if inner[i + 1:i + 2] in ("^", "]"):
                return False
            in_class = True
        elif c in "^$.":
            return False
        elif c == "(":
            if inner[i + 1:i + 2] == "?" and inner[i + 1:i + 3] != "?:":
                return False
            depth += 1
        elif c == ")":
            depth -= 1
            if depth < 0:
                return False
        elif c == "|" and depth == 0:
            return False
        i += 1
    return depth == 0 and not in_class
