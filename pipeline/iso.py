"""The ISO code lists the contract names, from pycountry (Debian's iso-codes data).

``currency`` is ISO 4217 alpha-3 and ``country`` ISO 3166-1 alpha-2. A shape check
(``^[A-Z]{3}$``) let any producer invent thousands of currencies, and every one of them
became a dimension of the windowed metrics (a 1.3 MB table value from 5,000 of them).
The schema names these lists as JSON Schema formats (``"format": "iso4217"``), which all
three validators honour: the fast path as a literal set, fastjsonschema and jsonschema as
format checks (:mod:`pipeline.schema`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pycountry

CURRENCIES: frozenset[str] = frozenset(c.alpha_3 for c in pycountry.currencies)
COUNTRIES: frozenset[str] = frozenset(c.alpha_2 for c in pycountry.countries)

# JSON Schema format name -> (the codes, what the error message calls them)
FORMATS: dict[str, tuple[frozenset[str], str]] = {
    "iso4217": (CURRENCIES, "an ISO 4217 currency code"),
    "iso3166-alpha2": (COUNTRIES, "an ISO 3166-1 alpha-2 country code"),
}


def is_known(fmt: str, value: object) -> bool:
    """False only for a value with a code's shape (upper-case letters, the codes' length)
    that is not on the list: other values are the ``pattern`` keyword's to refuse, so a
    message gets one error per field, not two."""
    codes = FORMATS[fmt][0]
    if not isinstance(value, str) or value in codes:
        return True
    shaped = value.isascii() and value.isalpha() and value.isupper()
    return not (shaped and len(value) == len(next(iter(codes))))


def format_checks() -> dict[str, Callable[[Any], bool]]:
    """Format name -> predicate, as fastjsonschema's ``formats`` takes them."""
    return {name: functools.partial(is_known, name) for name in FORMATS}
