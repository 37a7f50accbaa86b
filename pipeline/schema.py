"""The transaction JSON Schema, checked two ways: fast, and authoritative.

The schema is configuration (``config/schemas/transaction-v1.json``). It is
compiled twice, once at start-up:

* :func:`compile_fast` turns the subset of JSON Schema the contract uses into a
  msgspec ``Struct``, so decoding and checking are one C pass; the contract's patterns
  of top-level fields are matched after it, over a whole batch's values at once
  (:func:`batch_patterns`: a search a value from inside the decoder was 60 % of its
  time). It is an
  accelerator only: a message it accepts is accepted (the property tests in
  ``tests/unit/test_schema.py`` hold it to accepting nothing the authoritative
  validator rejects), a message it rejects goes to the authoritative path for
  its verdict and explanation. A schema using a keyword outside the subset
  compiles to ``None`` and every message takes the authoritative path.
* :class:`SchemaChecker` is the authoritative validator: fastjsonschema for the
  first error (fail-fast), jsonschema's ``iter_errors`` for all of them
  (collect-all). See docs/adr/0004-validation-fast-path.md for the figures.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import fastjsonschema
import jsonschema
import msgspec

from models.errors import PaymentMonitorError
from models.events import ValidationError, short_repr
from pipeline.iso import FORMATS, format_checks, is_known
from pipeline.regex import batched, linear, patterns, trusted_patterns

_ANNOTATIONS = {"$schema", "$id", "title", "description", "$comment", "examples"}
_OBJECT_KEYS = _ANNOTATIONS | {"type", "additionalProperties", "required", "properties"}
_FIELD_KEYS = _ANNOTATIONS | {"type", "const", "enum", "pattern", "minLength", "maxLength",
                              "minimum", "maximum", "maxProperties", "additionalProperties",
                              "format"}
_UNANCHORED_DOLLAR = re.compile(r"(?<!\\)\$")


class UnsupportedSchema(PaymentMonitorError, ValueError):
    """The schema uses a keyword the fast path does not implement."""


def load_schema(path: Path) -> dict[str, Any]:
    schema = json.loads(path.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def compile_fast(schema: dict[str, Any]) -> msgspec.json.Decoder | None:
    """A msgspec decoder equivalent to ``schema`` on its accept side, or None."""
    try:
        return msgspec.json.Decoder(_struct_for(schema))
    except UnsupportedSchema:
        return None


def _struct_for(schema: dict[str, Any]) -> type[msgspec.Struct]:
    _only(schema, _OBJECT_KEYS, "the top level")
    if schema.get("type") != "object" or schema.get("additionalProperties") is not False:
        raise UnsupportedSchema("the top level must be a closed object")
    required = set(schema.get("required", []))
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name, spec in schema.get("properties", {}).items():
        if not name.isidentifier() or name.startswith("_"):
            raise UnsupportedSchema(f"property name {name!r}")
        annotation = _type_for(name, spec)
        if name in required:
            fields.append((name, annotation))
        else:  # absent and null are different things: absent is UNSET
            fields.append((name, annotation | msgspec.UnsetType, msgspec.UNSET))
    if required - set(schema.get("properties", {})):
        raise UnsupportedSchema("a required property without a definition")
    return msgspec.defstruct("FastTransaction", fields, kw_only=True,
                             forbid_unknown_fields=True)


def _type_for(name: str, spec: dict[str, Any]) -> Any:
    _only(spec, _FIELD_KEYS, name)
    if "const" in spec:
        return _literal([spec["const"]], name)
    if "enum" in spec:
        return _literal(spec["enum"], name)
    types = spec.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    nullable = "null" in types
    types = [t for t in types if t != "null"]
    if len(types) != 1:
        raise UnsupportedSchema(f"{name}: exactly one non-null type is supported")
    kind = types[0]
    if kind == "string" and "format" in spec:
        if spec["format"] not in FORMATS:
            raise UnsupportedSchema(f"{name}: format {spec['format']!r}")
        # an ISO code list: every code matches the shape the pattern and lengths allow,
        # which the tests in tests/unit/test_iso.py hold it to
        codes = sorted(FORMATS[spec["format"]][0])
        annotation: Any = Literal[tuple(codes)]
    elif kind == "string":
        # a pattern from elsewhere than the contract is checked by RE2 after the decode
        # (untrusted_patterns), never by the backtracking engine msgspec uses; a contract
        # pattern of a top-level field over the whole batch after the decode when it can
        # be (batch_patterns), else by msgspec
        trusted = spec.get("pattern") in trusted_patterns()
        if not trusted and "pattern" in spec and "." in name:
            raise UnsupportedSchema(f"{name}: a nested pattern from outside the contract")
        in_decoder = trusted and _batched(name, spec) is None
        meta = _meta(spec, pattern="pattern" if in_decoder else "", min_length="minLength",
                     max_length="maxLength")
        annotation = Annotated[str, meta] if meta else str
    elif kind in ("integer", "number"):
        meta = _meta(spec, ge="minimum", le="maximum")
        base = int if kind == "integer" else float
        annotation = Annotated[base, meta] if meta else base
    elif kind == "object":
        values = spec.get("additionalProperties", True)
        value_type = Any if values is True else _type_for(f"{name}.*", values)
        meta = _meta(spec, max_length="maxProperties")
        mapping: Any = dict[str, value_type]  # type: ignore[valid-type]  # built at run time
        annotation = Annotated[mapping, meta] if meta else mapping
    else:
        raise UnsupportedSchema(f"{name}: type {kind!r}")
    return annotation | None if nullable else annotation


def batch_patterns(schema: dict[str, Any]) -> list[tuple[str, re.Pattern[str], re.Pattern[str]]]:
    """``(top-level field, batched regex, the regex of one value)`` for each contract
    pattern the fast path matches over a batch's decoded values at once
    (:func:`~pipeline.regex.batched`) rather than in the decoder one value at a time."""
    out = []
    for name, spec in (schema.get("properties") or {}).items():
        whole = _batched(name, spec) if isinstance(spec, dict) else None
        if whole is not None:
            one = re.compile(_UNANCHORED_DOLLAR.sub(r"\\Z", spec["pattern"]))
            out.append((name, whole, one))
    return out


def _batched(name: str, spec: dict[str, Any]) -> re.Pattern[str] | None:
    """``spec``'s pattern over a batch (:func:`~pipeline.regex.batched`) when the fast
    path matches it after the decode: a contract pattern of a top-level string field (not
    a code list, enum or constant, which the decoder checks whole) that ``batched``
    takes; else None."""
    pattern = spec.get("pattern")
    if (not isinstance(pattern, str) or "." in name
            or {"const", "enum", "format"} & spec.keys() or pattern not in trusted_patterns()):
        return None
    return batched(pattern)


def untrusted_patterns(schema: dict[str, Any]) -> list[tuple[str, Any]]:
    """``(top-level field, RE2 regex)`` for each pattern the fast path leaves out: a
    decoded value must also match these before it is accepted (else the slow path)."""
    out = []
    for name, spec in (schema.get("properties") or {}).items():
        pattern = spec.get("pattern") if isinstance(spec, dict) else None
        if isinstance(pattern, str) and pattern not in trusted_patterns():
            out.append((name, linear(pattern)))
    return out


def check_patterns(schema: dict[str, Any]) -> None:
    """Raise :class:`~pipeline.regex.SlowPattern` for any pattern in a schema that RE2
    cannot run."""
    for pattern in patterns(schema):
        if pattern not in trusted_patterns():
            linear(pattern)


def _literal(values: list[Any], name: str) -> Any:
    if not values or not all(type(v) is str for v in values):
        raise UnsupportedSchema(f"{name}: only string const/enum values are supported")
    return Literal[tuple(values)]


def _meta(spec: dict[str, Any], **keys: str) -> msgspec.Meta | None:
    kwargs = {arg: spec[key] for arg, key in keys.items() if key and key in spec}
    if "pattern" in kwargs:  # JSON Schema's `$` does not match before a final newline
        kwargs["pattern"] = _UNANCHORED_DOLLAR.sub(r"\\Z", kwargs["pattern"])
    return msgspec.Meta(**kwargs) if kwargs else None


def _only(spec: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = set(spec) - allowed
    if extra:
        raise UnsupportedSchema(f"{where}: keyword(s) {sorted(extra)}")


class SchemaChecker:
    """The authoritative verdict on one decoded JSON object."""

    def __init__(self, schema: dict[str, Any]) -> None:
        self.schema = schema
        check_patterns(schema)
        self._first: Callable[[Any], Any] = fastjsonschema.compile(schema,
                                                                   formats=format_checks())
        # its generated code looks patterns up here: the untrusted ones run on RE2
        compiled = getattr(self._first, "__globals__", {}).get("REGEX_PATTERNS", {})
        for pattern in list(compiled):
            if pattern not in trusted_patterns():
                compiled[pattern] = linear(pattern)
        self._all = _LinearDraft7(schema, format_checker=_format_checker())

    def first_error(self, obj: dict[str, Any]) -> ValidationError | None:
        try:
            self._first(obj)
        except fastjsonschema.JsonSchemaValueException as exc:
            return _explain_fast(exc, obj)
        return None

    def all_errors(self, obj: dict[str, Any]) -> list[ValidationError]:
        errors = sorted(self._all.iter_errors(obj), key=lambda e: list(e.absolute_path))
        return [_explain_full(e, obj) for e in errors]


def _explain_fast(exc: fastjsonschema.JsonSchemaValueException,
                  obj: dict[str, Any]) -> ValidationError:
    """Turn a fastjsonschema error into an error that names the field."""
    field = (exc.name or "").removeprefix("data.").removeprefix("data") or None
    rule = exc.rule or "schema"
    definition = exc.definition or {}
    if rule == "required":
        missing = [name for name in definition.get("required", []) if name not in obj]
        name = missing[0] if missing else field
        return ValidationError(name, rule, f"{name} is required")
    if rule == "additionalProperties":
        return _unknown_fields(obj, definition)
    if rule == "format" and definition.get("format") in FORMATS:
        return _not_a_code(field, definition["format"], exc.value)
    message = exc.message
    if message.startswith("data."):
        message = message[len("data."):]
    elif message.startswith("data "):
        message = "message " + message[len("data "):]
    value = short_repr(exc.value)
    return ValidationError(field, rule, f"{message} (got {value})", value)


def _explain_full(error: jsonschema.ValidationError, obj: dict[str, Any]) -> ValidationError:
    field = ".".join(str(p) for p in error.absolute_path) or None
    rule = str(error.validator)
    if rule == "required":
        name = str(error.message).split("'")[1] if "'" in error.message else field
        if field:
            name = f"{field}.{name}"
        return ValidationError(name, rule, f"{name} is required")
    if rule == "additionalProperties" and not field:
        return _unknown_fields(obj, error.schema)
    if rule == "format" and error.validator_value in FORMATS:
        return _not_a_code(field, str(error.validator_value), error.instance)
    value = short_repr(error.instance)
    where = field or "message"
    return ValidationError(field, rule, f"{where}: {error.message[:200]}", value)


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    """jsonschema's ``pattern`` keyword, on RE2 for patterns from outside the contract."""
    if not isinstance(instance, str):
        return
    regex = re.compile(pattern) if pattern in trusted_patterns() else linear(pattern)
    if not regex.search(instance):
        yield jsonschema.ValidationError(f"{instance!r} does not match {pattern!r}")


_LinearDraft7 = jsonschema.validators.extend(jsonschema.Draft7Validator, {"pattern": _pattern})


def _format_checker() -> jsonschema.FormatChecker:
    """Only the ISO code formats are asserted; others stay annotations, as before."""
    checker = jsonschema.FormatChecker(formats=())
    for name in FORMATS:
        checker.checks(name)(functools.partial(is_known, name))
    return checker


def _not_a_code(field: str | None, fmt: str, value: Any) -> ValidationError:
    shown = short_repr(value)
    return ValidationError(field, "format", f"{field} {shown} is not {FORMATS[fmt][1]}", shown)


def _unknown_fields(obj: dict[str, Any], definition: dict[str, Any]) -> ValidationError:
    unknown = sorted(set(obj) - set(definition.get("properties", {})))
    names = ", ".join(k[:64] for k in unknown)
    return ValidationError(unknown[0][:64] if unknown else None, "additionalProperties",
                           f"unknown field(s): {names}")
