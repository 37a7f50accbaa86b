"""Regular expressions from configuration run on a linear-time engine (RE2).

A pushed validation rule or schema pattern is code that runs on every message, and
Python's ``re`` backtracks: ``^(a+)+$`` against forty ``a`` and a ``b`` stalled every
worker of the fleet (``/healthz`` timed out, nothing more was processed). RE2 answers in
time linear in the input, whatever the pattern, and refuses what needs backtracking
(backreferences, lookaround): such a pattern is refused when the configuration is
checked, before any worker sees it.

The contract's own patterns (``config/schemas/transaction-v1.json``, reviewed with the
code) are anchored character classes that ``re`` matches in linear time; they keep the
msgspec fast path. The google-re2 binding costs 5.5-6.9 us a call (0.26 us for a
compiled ``re``), so only patterns from elsewhere pay it
(docs/adr/0009-hostile-input.md).
"""

from __future__ import annotations

import functools
import json
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
