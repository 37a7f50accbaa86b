"""Bytes in, a :class:`~models.events.Payment` or a :class:`ParseFailure` out.

Pure code: no Faust, no I/O. The JSON Schema is configuration
(``config/schemas/transaction-v1.json``), compiled once into Python code by
fastjsonschema (see docs/adr/0002-libraries.md for the measurement).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastjsonschema
import orjson

from config import CONFIG_DIR
from models.events import ErrorCategory, ParseFailure, Payment

_INTEGER_FIELDS = ("amount_minor", "processing_ms")
MAX_MESSAGE_BYTES = 1 << 20  # 1 MiB, from the wire format contract
TRANSACTION_SCHEMA_PATH = CONFIG_DIR / "schemas" / "transaction-v1.json"


@lru_cache(maxsize=4)
def compiled_schema(path: Path = TRANSACTION_SCHEMA_PATH) -> Callable[[Any], Any]:
    """The transaction schema compiled to a validator function (cached)."""
    return fastjsonschema.compile(json.loads(path.read_text()))


def parse_payment(
    raw: bytes | None, validate: Callable[[Any], Any] | None = None
) -> Payment | ParseFailure:
    """Parse and validate one message value; never raises for bad input."""
    if raw is None:
        return ParseFailure(ErrorCategory.NOT_JSON, "message has no value (null record)")
    if len(raw) > MAX_MESSAGE_BYTES:
        return ParseFailure(
            ErrorCategory.TOO_LARGE,
            f"message is {len(raw)} bytes, over the limit of {MAX_MESSAGE_BYTES}",
        )
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as uexc:
            return ParseFailure(
                ErrorCategory.NOT_UTF8, f"message is not UTF-8: byte {uexc.start} is invalid"
            )
        try:
            # orjson refuses integers beyond 64 bits; the schema should name that field
            obj = json.loads(text, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return ParseFailure(ErrorCategory.NOT_JSON, f"message is not JSON: {exc}")
    if not isinstance(obj, dict):
        return ParseFailure(
            ErrorCategory.NOT_OBJECT, f"message is a JSON {type(obj).__name__}, not an object"
        )
    try:
        (validate or compiled_schema())(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        field, message = _explain(exc, obj)
        return ParseFailure(ErrorCategory.SCHEMA, message, field)
    if b"\\u0000" in raw:  # JSON can carry NUL in a string; PostgreSQL text cannot store it
        field = _field_with_nul(obj)
        if field is not None:
            return ParseFailure(
                ErrorCategory.SCHEMA, f"{field} contains a NUL character (\\u0000)", field
            )
    for name in _INTEGER_FIELDS:
        if type(obj[name]) is not int:  # JSON Schema counts 10.0 as an integer; the contract not
            return ParseFailure(
                ErrorCategory.SCHEMA, f"{name} must be an integer, not {obj[name]!r}", name
            )
    try:
        event_time = datetime.fromisoformat(obj["event_time"])
    except ValueError:
        return ParseFailure(
            ErrorCategory.SCHEMA,
            f"event_time is not a valid date: {obj['event_time'][:40]!r}",
            "event_time",
        )
    return Payment(
        transaction_id=obj["transaction_id"],
        event_time=event_time,
        merchant_id=obj["merchant_id"],
        customer_id=obj["customer_id"],
        amount_minor=obj["amount_minor"],
        currency=obj["currency"],
        channel=obj["channel"],
        payment_method=obj["payment_method"],
        status=obj["status"],
        decline_code=obj.get("decline_code"),
        country=obj["country"],
        processing_ms=obj["processing_ms"],
        card_bin=obj.get("card_bin"),
        risk_score=obj.get("risk_score"),
        metadata=obj.get("metadata"),
    )


def _field_with_nul(obj: dict[str, Any]) -> str | None:
    for name, value in obj.items():
        if isinstance(value, str) and "\x00" in value:
            return name
        if isinstance(value, dict):
            for key, inner in value.items():
                if "\x00" in key or (isinstance(inner, str) and "\x00" in inner):
                    return f"{name}.{key.replace(chr(0), '?')[:64]}"
    return None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _explain(exc: fastjsonschema.JsonSchemaValueException, obj: dict) -> tuple[str | None, str]:
    """Turn a schema error into (field, a message that names the field)."""
    field = (exc.name or "").removeprefix("data.").removeprefix("data") or None
    definition = exc.definition or {}
    if exc.rule == "required":
        missing = [name for name in definition.get("required", []) if name not in obj]
        name = missing[0] if missing else field
        if name == "decline_code":
            return name, "decline_code is required when status is 'declined'"
        return name, f"{name} is required"
    if exc.rule == "additionalProperties":
        unknown = sorted(set(obj) - set(definition.get("properties", {})))
        return unknown[0][:64], f"unknown field(s): {', '.join(k[:64] for k in unknown)}"
    value = repr(exc.value)
    if len(value) > 80:
        value = value[:77] + "..."
    message = exc.message
    if message.startswith("data."):
        message = message[len("data."):]
    elif message.startswith("data "):
        message = "message " + message[len("data "):]
    return field, f"{message} (got {value})"
