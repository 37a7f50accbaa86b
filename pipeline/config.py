"""Configuration: three versioned keys, validated and compiled before they are used.

The keys (as in the seeds and in Azure App Configuration):

* ``schemas:transaction:v1``: the transaction JSON Schema, the validation mode and the
  validation rules (``config/validation.yaml`` with its schema file inlined);
* ``metrics:definitions:v1``: the metric extractors (``config/metrics.yaml``);
* ``compliance:rules:v1``: the compliance rules (``config/compliance.yaml``).

A candidate set of documents becomes an :class:`ActiveConfig` only after every
document passed its own JSON Schema (``config/schemas/config-*.json``) and compiled
(the validator, the metric engine), and after the cross-checks: rules name fields the
schema declares, the schema still requires the contract's fields, and no windowed
metric changed its bucket bounds (stored windows would no longer merge). Any failure
is a :class:`ConfigError` naming the key, the path inside it and the problem.

:class:`ConfigManager` holds the active version. A reload compiles the candidate off
to the side and swaps one reference, so the hot path, which reads ``manager.active``
once per batch, processes each batch wholly under one version; a rejected candidate
leaves the previous version active (rollback), and is logged and counted.
See docs/configuration.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import jsonschema
import yaml

import pipeline.compliance  # noqa: F401 - registers the compliance rules' extractors
from config import CONFIG_DIR
from models.errors import PaymentMonitorError
from pipeline.metrics import (
    DIMENSION_FIELDS,
    MetricEngine,
    MetricExtractor,
    MetricsConfigError,
    build_extractors,
)
from pipeline.parse import Mode, Validator
from pipeline.rules import RuleConfigError, build_rules

log = logging.getLogger(__name__)

TRANSACTION_KEY = "schemas:transaction:v1"
METRICS_KEY = "metrics:definitions:v1"
COMPLIANCE_KEY = "compliance:rules:v1"
KEYS = (TRANSACTION_KEY, METRICS_KEY, COMPLIANCE_KEY)
SHORT_NAMES = {TRANSACTION_KEY: "schema", METRICS_KEY: "metrics", COMPLIANCE_KEY: "compliance"}
META_SCHEMA_FILES = {
    TRANSACTION_KEY: "config-transaction-v1.json",
    METRICS_KEY: "config-metrics-v1.json",
    COMPLIANCE_KEY: "config-compliance-v1.json",
}
# The payment-event-v1 contract's required fields: the typed transaction is built from
# them, so a transaction schema that stops requiring one cannot be activated.
CONTRACT_SCHEMA = CONFIG_DIR / "schemas" / "transaction-v1.json"


class ConfigError(PaymentMonitorError, ValueError):
    """A configuration document that cannot be activated: names key, path and problem."""

    def __init__(self, key: str, path: str, problem: str) -> None:
        self.key, self.path, self.problem = key, path, problem
        super().__init__(f"{key}: {path}: {problem}" if path else f"{key}: {problem}")

    @classmethod
    def from_compiler(cls, key: str, message: str) -> ConfigError:
        """From a compiler's message such as ``extractors[1] (amount): buckets: ...``."""
        if message.startswith(f"{key}: "):
            message = message[len(key) + 2:]
        match = _COMPILER_PATH.match(message)
        if match:
            return cls(key, match["path"], match["problem"])
        return cls(key, "", message)


_COMPILER_PATH = re.compile(r"^(?P<path>(?:extractors|rules)\[\d+\])(?: \([^)]*\))?: "
                            r"(?P<problem>.*)$", re.S)


MAX_DOCUMENT_BYTES = 1 << 20  # a configuration document's YAML text, at most
MAX_ALIASES = 100  # YAML aliases (``*name``) in one document
MAX_NODES = 200_000  # values in the document once its aliases are expanded


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting aliases: a "billion laughs" document is a few
    hundred bytes whose aliases expand to billions of values (40 s of `config push`)."""

    aliases = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_ALIASES} aliases")
        return super().compose_node(parent, index)


def load_yaml(text: str | bytes) -> Any:
    """A YAML (or JSON) configuration document, bounded in size, aliases and expanded
    values; raises ``yaml.YAMLError`` naming the bound it broke."""
    if len(text) > MAX_DOCUMENT_BYTES:
        raise yaml.YAMLError(f"the document is {len(text)} bytes, over the limit of "
                             f"{MAX_DOCUMENT_BYTES}")
    loader = _BoundedLoader(text)
    try:
        document = loader.get_single_data()
    finally:
        loader.dispose()
    if _expanded_size(document, {}) > MAX_NODES:
        raise yaml.YAMLError(f"the document expands to more than {MAX_NODES} values")
    return document


def _expanded_size(node: Any, memo: dict[int, int]) -> int:
    """Values in ``node`` as if every alias were copied out, counted without copying."""
    if not isinstance(node, dict | list):
        return 1
    known = memo.get(id(node))
    if known is not None:
        return known
    memo[id(node)] = MAX_NODES + 1  # a cycle (``&a [*a]``) counts as too big
    children = node.values() if isinstance(node, dict) else node
    size = 1 + sum(_expanded_size(child, memo) for child in children)
    memo[id(node)] = size
    return size


def digest(document: Mapping[str, Any]) -> str:
    """A content hash of a document (canonical JSON), 12 hex digits."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ConfigVersion:
    """One version of one key's document.

    ``version`` is its number in the config topic (1, 2, ...); 0 means it came straight
    from the source (files or App Configuration) and was never pushed.
    """

    key: str
    document: Mapping[str, Any]
    version: int = 0
    source: str = "files"
    pushed_at: str = ""
    pushed_by: str = ""
    comment: str = ""
    digest: str = field(default="")

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", digest(self.document))

    @property
    def label(self) -> str:
        """``v7`` for a pushed version, ``files:1a2b3c4d`` for one read from the source."""
        return f"v{self.version}" if self.version else f"{self.source}:{self.digest[:8]}"

    def to_record(self) -> dict[str, Any]:
        return {"key": self.key, "version": self.version, "digest": self.digest,
                "document": self.document, "source": self.source,
                "pushed_at": self.pushed_at, "pushed_by": self.pushed_by,
                "comment": self.comment}

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ConfigVersion:
        return cls(key=record["key"], document=record["document"],
                   version=int(record["version"]), source=record.get("source", "topic"),
                   pushed_at=record.get("pushed_at", ""), pushed_by=record.get("pushed_by", ""),
                   comment=record.get("comment", ""), digest=record.get("digest", ""))

    def pushed(self, version: int, by: str, comment: str = "") -> ConfigVersion:
        """This document as version ``version`` of the config topic."""
        return ConfigVersion(self.key, self.document, version, "topic",
                             datetime.now(UTC).isoformat(timespec="milliseconds"), by, comment,
                             self.digest)


@dataclass(frozen=True)
class ActiveConfig:
    """Everything one batch runs under: the documents and their compiled forms."""

    versions: Mapping[str, ConfigVersion]
    validator: Validator
    engine: MetricEngine

    @property
    def version(self) -> str:
        """Recorded on every stored metric row: ``schema=v3;metrics=v7;compliance=v5``."""
        return ";".join(f"{SHORT_NAMES[k]}={self.versions[k].label}" for k in KEYS)


# -- validation and compilation -------------------------------------------------------------


_meta_validators: dict[str, jsonschema.Draft7Validator] = {}


def _meta(key: str) -> jsonschema.Draft7Validator:
    validator = _meta_validators.get(key)
    if validator is None:
        schema = json.loads((CONFIG_DIR / "schemas" / META_SCHEMA_FILES[key]).read_text())
        validator = _meta_validators[key] = jsonschema.Draft7Validator(schema)
    return validator


def _path(parts: Any) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def check_document(key: str, document: Any) -> None:
    """Check one document against its key's JSON Schema (structure only)."""
    if key not in META_SCHEMA_FILES:
        raise ConfigError(key, "", f"unknown configuration key (known: {', '.join(KEYS)})")
    if not isinstance(document, Mapping):
        raise ConfigError(key, "", f"expected a mapping at the top, got {type(document).__name__}")
    error = jsonschema.exceptions.best_match(_meta(key).iter_errors(document))
    if error is not None:
        raise ConfigError(key, _path(error.absolute_path), error.message)


def _compile_validator(document: Mapping[str, Any]) -> Validator:
    key = TRANSACTION_KEY
    schema = document["schema"]
    try:
        jsonschema.Draft7Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ConfigError(key, _path(["schema", *exc.absolute_path]),
                          f"not a valid JSON Schema: {exc.message}") from None
    properties = schema.get("properties") or {}
    contract = json.loads(CONTRACT_SCHEMA.read_text())
    required = set(schema.get("required") or ())
    for name in contract["required"]:
        if name not in required or name not in properties:
            raise ConfigError(key, "schema.required",
                              f"must require {name!r}: the payment-event-v1 contract requires "
                              f"it and the worker reads it")
    _check_contract_types(contract, properties)
    for i, rule in enumerate(document.get("rules") or ()):
        names = [("field", rule["field"])] if "field" in rule else []
        names += [(f"when.{k}", k) for k in rule.get("when") or {}]
        for where, name in names:
            top = name.split(".", 1)[0]
            if top not in properties:
                raise ConfigError(key, f"rules[{i}].{where}",
                                  f"names field {name!r}, which the schema does not declare")
    try:
        rules = build_rules(document.get("rules") or [])
        fast = Validator(schema, rules, Mode(document.get("mode", Mode.FAIL_FAST)))
    except RuleConfigError as exc:
        raise ConfigError.from_compiler(key, str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a schema the compilers refuse
        raise ConfigError(key, "schema", f"does not compile: {type(exc).__name__}: {exc}"
                          ) from None
    return fast


def _check_contract_types(contract: Mapping[str, Any], properties: Mapping[str, Any]) -> None:
    """A pushed schema may tighten the contract (patterns, lengths, ranges), never change
    a field's type, widen its values or drop it: the worker reads every field as the
    contract types it (one that stopped typing ``currency`` crashed the worker)."""
    key = TRANSACTION_KEY
    for name, want in contract["properties"].items():
        have = properties.get(name)
        where = f"schema.properties.{name}"
        if not isinstance(have, Mapping):
            raise ConfigError(key, where, "must be declared: the payment-event-v1 contract "
                                          "defines it")
        if "type" in want and _type_set(have.get("type")) != _type_set(want["type"]):
            raise ConfigError(key, f"{where}.type", f"must be {want['type']!r}, as in the "
                                                    "payment-event-v1 contract")
        allowed = want.get("enum", [want["const"]] if "const" in want else None)
        if allowed is not None:
            values = have.get("enum", [have["const"]] if "const" in have else None)
            if values is None or not set(map(json.dumps, values)) <= set(
                    map(json.dumps, allowed)):
                raise ConfigError(key, where, f"must keep to the contract's values {allowed}")
        if "format" in want and have.get("format") != want["format"]:
            raise ConfigError(key, f"{where}.format", f"must be {want['format']!r}, as in "
                                                      "the payment-event-v1 contract")


def _type_set(value: Any) -> frozenset[str]:
    return frozenset([value] if isinstance(value, str) else value or ())


def engine_from_config(metrics: Mapping[str, Any], compliance: Mapping[str, Any] | None = None,
                       version: str = "files") -> MetricEngine:
    """Compile ``metrics:definitions:v1`` and ``compliance:rules:v1`` documents (without
    the cross-checks of :func:`compile_config`); raises :class:`MetricsConfigError`."""
    windowed = metrics.get("windowed_dimensions", [])
    bad = [f for f in windowed if f not in DIMENSION_FIELDS]
    if bad:
        raise MetricsConfigError(f"{METRICS_KEY}: windowed_dimensions names unknown "
                                 f"field {bad[0]!r}")
    extractors = build_extractors(metrics.get("extractors"), METRICS_KEY)
    if compliance is not None:
        extractors += build_extractors(
            compliance.get("rules"), COMPLIANCE_KEY, kind_key="rule", list_name="rules",
            default_dimensions=compliance.get("dimensions"))
    return MetricEngine(extractors, windowed, version)


def _compile_engine(metrics: Mapping[str, Any], compliance: Mapping[str, Any]) -> MetricEngine:
    try:
        return engine_from_config(dict(metrics), dict(compliance))
    except MetricsConfigError as exc:
        message = str(exc)
        key = COMPLIANCE_KEY if message.startswith(f"{COMPLIANCE_KEY}: ") else METRICS_KEY
        raise ConfigError.from_compiler(key, message) from None


def _check_bounds(engine: MetricEngine, known: Mapping[str, tuple[float, ...]],
                  metrics: Mapping[str, Any]) -> None:
    """No metric may change its bucket bounds: the windows already stored would not merge."""
    index = {d.name: i for i, extractor in enumerate(engine.extractors)
             for d in extractor.definitions()}
    for name, definition in engine.definitions.items():
        before = known.get(name)
        if before is not None and before != definition.bounds:
            i = index[name]
            key, where = ((METRICS_KEY, f"extractors[{i}].buckets")
                          if i < len(metrics["extractors"])
                          else (COMPLIANCE_KEY, f"rules[{i - len(metrics['extractors'])}]"))
            raise ConfigError(key, where,
                              f"metric {name!r} had buckets {list(before)}, now "
                              f"{list(definition.bounds)}: its stored windows would no longer "
                              f"merge; give the new buckets a new metric name")


def compile_config(versions: Mapping[str, ConfigVersion],
                   known_bounds: Mapping[str, tuple[float, ...]] | None = None) -> ActiveConfig:
    """Validate and compile a full set of documents; raises :class:`ConfigError`."""
    missing = [k for k in KEYS if k not in versions]
    if missing:
        raise ConfigError(missing[0], "", "no document for this key")
    for key in KEYS:
        check_document(key, versions[key].document)
    validator = _compile_validator(versions[TRANSACTION_KEY].document)
    metrics = versions[METRICS_KEY].document
    engine = _compile_engine(metrics, versions[COMPLIANCE_KEY].document)
    _check_bounds(engine, known_bounds or {}, metrics)
    active = ActiveConfig(dict(versions), validator, engine)
    engine.version = active.version
    return active


# -- the config topic's records, and planning a push ---------------------------------------


def history_key(key: str, version: int) -> str:
    """The config topic's record key of version ``version`` of ``key`` (never overwritten)."""
    return f"{key}@{version}"


class ConfigRecords:
    """A view of the config topic's records (record key -> JSON value): each key's latest
    version (record ``"<key>"``) and its history (records ``"<key>@<n>"``)."""

    def __init__(self, records: Mapping[str, Mapping[str, Any] | None]) -> None:
        self.records = {k: v for k, v in records.items() if v}

    def latest(self, key: str) -> ConfigVersion | None:
        record = self.records.get(key)
        return ConfigVersion.from_record(record) if record else None

    def history(self, key: str) -> list[ConfigVersion]:
        prefix = f"{key}@"
        found = [ConfigVersion.from_record(v) for k, v in self.records.items()
                 if k.startswith(prefix)]
        return sorted(found, key=lambda v: v.version)

    def version(self, key: str, number: int) -> ConfigVersion | None:
        record = self.records.get(history_key(key, number))
        return ConfigVersion.from_record(record) if record else None

    def latest_over(self, source: Mapping[str, ConfigVersion]) -> dict[str, ConfigVersion]:
        """What the workers run: each key's latest pushed version, else the source's."""
        return {key: self.latest(key) or source[key] for key in KEYS}

    def next_number(self, key: str) -> int:
        """The number the key's next pushed version gets."""
        history = self.history(key)
        latest = self.latest(key)
        return max([0, *(v.version for v in history), latest.version if latest else 0]) + 1

    def known_bounds(self) -> dict[str, tuple[float, ...]]:
        """Bucket bounds of every windowed metric any pushed version defined, in the
        metrics or the compliance key: stored windows may still hold any of them."""
        bounds: dict[str, tuple[float, ...]] = {}
        for key in (METRICS_KEY, COMPLIANCE_KEY):
            for version in self.history(key):
                metrics, compliance = ((version.document, None) if key == METRICS_KEY
                                       else ({"extractors": []}, version.document))
                try:
                    engine = engine_from_config(metrics, compliance)
                except MetricsConfigError:
                    continue  # an old version this code no longer compiles
                bounds.update((name, d.bounds) for name, d in engine.definitions.items()
                              if d.bounds)
        return bounds


def plan_push(records: ConfigRecords, candidates: Mapping[str, ConfigVersion],
              source: Mapping[str, ConfigVersion], *, by: str, comment: str,
              known_bounds: Mapping[str, tuple[float, ...]] | None = None,
              ) -> list[ConfigVersion]:
    """The versions a push appends to the config topic (``faust -A app config push`` and
    ``rollback``, and the source watcher).

    A candidate becomes a new version when the topic holds no version of its key or a
    different document; it is numbered after the key's newest version. The new set
    (the topic's latest versions, ``source`` for keys never pushed, the candidates on
    top) must compile, and no metric may change the bucket bounds any version in the
    topic's history (or ``known_bounds``) gave it. Raises :class:`ConfigError`.
    """
    changed = {}
    for key, candidate in candidates.items():
        latest = records.latest(key)
        if latest is None or latest.digest != candidate.digest:
            changed[key] = candidate
    if not changed:
        return []
    current = records.latest_over(source)
    compile_config({**current, **changed}, {**(known_bounds or {}), **records.known_bounds()})
    return [version.pushed(records.next_number(key), by, comment)
            for key, version in changed.items()]


# -- the manager --------------------------------------------------------------------------


class ConfigSource(Protocol):
    """Where documents come from: local files or Azure App Configuration."""

    name: str

    def load(self) -> dict[str, ConfigVersion]:
        """Every key's current document (raises :class:`ConfigError` when unreadable)."""

    def changed(self) -> bool:
        """Cheap check: has anything changed since the last ``load``?"""


@dataclass
class ReloadResult:
    changed: tuple[str, ...] = ()  # keys that took a new version
    error: ConfigError | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class ConfigStats:
    reloads: int = 0
    rejected: int = 0
    last_reload_seconds: float | None = None
    last_reload_at: str | None = None
    last_error: str | None = None


class ConfigManager:
    """The validated, compiled configuration of this process, swapped whole on reload.

    Thread- and task-safe: reloads are serialized by a lock and publish a new
    :class:`ActiveConfig` with one reference assignment; readers never lock.
    """

    def __init__(self, source: ConfigSource) -> None:
        self.source = source
        self._lock = threading.Lock()
        self._active: ActiveConfig | None = None
        self._known_bounds: dict[str, tuple[float, ...]] = {}
        self.stats = ConfigStats()

    @property
    def loaded(self) -> bool:
        return self._active is not None

    @property
    def active(self) -> ActiveConfig:
        active = self._active
        if active is None:
            raise RuntimeError("configuration not loaded: call load_all_configuration() first")
        return active

    def load_all_configuration(self, versions: Mapping[str, ConfigVersion] | None = None,
                               ) -> ActiveConfig:
        """Load every key from the source (or take ``versions``) and activate it; raises
        :class:`ConfigError` (at start-up there is no earlier version to fall back on)."""
        start = time.perf_counter()
        with self._lock:
            active = compile_config(versions if versions is not None else self.source.load(),
                                    self._known_bounds)
            self._activate(active, KEYS, time.perf_counter() - start)
        log.info("configuration %s active (loaded from %s)", active.version,
                 "the config topic" if versions is not None else self.source.name,
                 extra={"config_version": active.version})
        return active

    def reload_configuration(self, changes: Mapping[str, ConfigVersion] | None = None,
                             ) -> ReloadResult:
        """Activate ``changes`` (some keys' new versions) or, without them, whatever the
        source holds now. A candidate that fails keeps the active version."""
        start = time.perf_counter()
        with self._lock:
            current = self.active
            try:
                if changes is None:
                    changes = self.source.load()
                candidate = {**current.versions, **changes}
                changed = tuple(k for k in KEYS if candidate[k] != current.versions[k])
                if not changed:
                    return ReloadResult()
                active = compile_config(candidate, self._known_bounds)
            except ConfigError as exc:
                self.stats.rejected += 1
                self.stats.last_error = str(exc)
                log.error("configuration rejected, %s stays active: %s", current.version, exc)
                return ReloadResult(error=exc, seconds=time.perf_counter() - start)
            seconds = time.perf_counter() - start
            self._activate(active, changed, seconds)
        log.info("configuration %s active (%s changed, compiled in %.0f ms)", active.version,
                 ", ".join(changed), seconds * 1000, extra={"config_version": active.version})
        return ReloadResult(changed, None, seconds)

    def _activate(self, active: ActiveConfig, changed: tuple[str, ...], seconds: float) -> None:
        for name, definition in active.engine.definitions.items():
            self._known_bounds[name] = definition.bounds
        self._active = active
        self.stats.reloads += 1
        self.stats.last_reload_seconds = seconds
        self.stats.last_reload_at = datetime.now(UTC).isoformat(timespec="milliseconds")

    def learn_bounds(self, bounds: Mapping[str, tuple[float, ...]]) -> None:
        """Add bucket bounds of metrics no activated version defined (the config topic's
        history: windows stored under any of them must still decode and stay mergeable)."""
        with self._lock:
            for name, value in bounds.items():
                self._known_bounds.setdefault(name, value)

    # the seeds' getters: compiled forms, cached until the next reload

    def get_transaction_schema(self) -> Validator:
        return self.active.validator

    def get_metrics_definitions(self) -> MetricEngine:
        return self.active.engine

    def get_compliance_rules(self) -> list[MetricExtractor]:
        return [e for e in self.active.engine.extractors if e.is_rule]

    @property
    def known_bounds(self) -> Mapping[str, tuple[float, ...]]:
        """Bucket bounds of every metric this process has activated or learned from the
        config topic's history (a candidate may not change them)."""
        return self._known_bounds

    def bounds(self, name: str) -> tuple[float, ...]:
        """Bucket bounds of a windowed metric of any version this process has activated or
        learned (bounds never change; stored windows also carry their own)."""
        return self._known_bounds.get(name, ())

    def snapshot(self) -> dict[str, Any]:
        """For the web UI: the active version per key and the reload counters."""
        active = self._active
        return {
            "version": active.version if active else None,
            "keys": {k: {"version": v.version, "label": v.label, "digest": v.digest,
                         "source": v.source, "pushed_at": v.pushed_at,
                         "pushed_by": v.pushed_by, "comment": v.comment}
                     for k, v in (active.versions.items() if active else ())},
            "reloads": self.stats.reloads,
            "rejected": self.stats.rejected,
            "last_reload_ms": (round(self.stats.last_reload_seconds * 1000, 1)
                               if self.stats.last_reload_seconds is not None else None),
            "last_reload_at": self.stats.last_reload_at,
            "last_error": self.stats.last_error,
        }
