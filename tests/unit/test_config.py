"""The configuration manager: validation before activation, rollback, reload and sync."""

from __future__ import annotations

import copy
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from agents.config import ConfigSync
from pipeline.config import (
    COMPLIANCE_KEY,
    KEYS,
    METRICS_KEY,
    TRANSACTION_KEY,
    ConfigError,
    ConfigManager,
    ConfigRecords,
    ConfigVersion,
    compile_config,
    history_key,
    plan_push,
)
from storage.config_sources import FileSource


@pytest.fixture(scope="module")
def shipped() -> dict[str, ConfigVersion]:
    return FileSource().load()


def docs(shipped: dict[str, ConfigVersion]) -> dict[str, dict[str, Any]]:
    return {k: copy.deepcopy(dict(v.document)) for k, v in shipped.items()}


def with_change(shipped: dict[str, ConfigVersion], key: str, change: Any,
                ) -> dict[str, ConfigVersion]:
    documents = docs(shipped)
    change(documents[key])
    return {**shipped, key: ConfigVersion(key, documents[key], source="test")}


class StaticSource:
    """A source whose documents the test sets."""

    name = "test"

    def __init__(self, versions: dict[str, ConfigVersion]) -> None:
        self.versions = versions

    def load(self) -> dict[str, ConfigVersion]:
        return dict(self.versions)

    def changed(self) -> bool:
        return True


def test_shipped_files_load_compile_and_name_their_versions(shipped):
    start = time.perf_counter()
    manager = ConfigManager(FileSource())
    active = manager.load_all_configuration()
    assert time.perf_counter() - start < 1.0  # seed WO-37: all configuration within 1 s
    assert set(active.versions) == set(KEYS)
    assert active.version == ";".join(
        f"{n}=files:{shipped[k].digest[:8]}"
        for n, k in (("schema", TRANSACTION_KEY), ("metrics", METRICS_KEY),
                     ("compliance", COMPLIANCE_KEY)))
    assert active.engine.version == active.version  # what dynamic_metrics rows record
    assert manager.get_transaction_schema() is active.validator
    assert manager.get_metrics_definitions() is active.engine
    assert {r.kind for r in manager.get_compliance_rules()} == {
        "large_amount", "high_risk_country", "velocity", "structuring", "high_risk_score"}
    assert manager.bounds("amount_minor")[:2] == (100, 500)


def _set(path: list[Any], value: Any):
    def change(doc: dict) -> None:
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return change


def _delete(path: list[Any]):
    def change(doc: dict) -> None:
        target = doc
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]
    return change


INVALID = [
    # (key, change, expected path, words in the problem)
    (METRICS_KEY, _set(["extractors", 1, "buckets"], [100, 500, 500, 1000]),
     "extractors[1]", ["buckets", "increase strictly", "overlap"]),
    (METRICS_KEY, _set(["extractors", 1, "buckets"], "many"),
     "extractors[1].buckets", ["'many' is not of type 'array'"]),
    (METRICS_KEY, _set(["extractors", 0, "extractor"], "no_such"),
     "extractors[0]", ["unknown extractor 'no_such'"]),
    (METRICS_KEY, _set(["extractors", 0, "dimensions"], [["channel", "planet"]]),
     "extractors[0]", ["unknown field 'planet'"]),
    (METRICS_KEY, _delete(["extractors", 2, "dimensions"]),
     "extractors[2]", ["'dimensions' is a required property"]),
    (METRICS_KEY, _set(["windowed_dimensions"], ["channel", "galaxy"]),
     "", ["windowed_dimensions", "'galaxy'"]),
    (METRICS_KEY, _set(["colour"], "blue"),
     "", ["'colour' was unexpected"]),
    (COMPLIANCE_KEY, _set(["rules", 0, "thresholds_minor", "EUR"], -5),
     "rules[0].thresholds_minor.EUR", ["-5 is less than the minimum of 1"]),
    (COMPLIANCE_KEY, _set(["rules", 1, "rule"], "gut_feeling"),
     "rules[1]", ["unknown rule 'gut_feeling'"]),
    (COMPLIANCE_KEY, _delete(["rules", 2, "max_payments"]),
     "rules[2]", ["max_payments"]),
    (TRANSACTION_KEY, _set(["schema", "properties", "amount_minor", "type"], "integr"),
     "schema.properties.amount_minor.type", ["not a valid JSON Schema"]),
    (TRANSACTION_KEY, _set(["schema", "required"], ["transaction_id", "event_time"]),
     "schema.required", ["must require 'schema_version'", "contract"]),
    (TRANSACTION_KEY, _set(["rules", 0, "field"], "decline_reason"),
     "rules[0].field", ["'decline_reason'", "does not declare"]),
    (TRANSACTION_KEY, _set(["rules", 0, "when"], {"state": "declined"}),
     "rules[0].when.state", ["'state'", "does not declare"]),
    (TRANSACTION_KEY, _set(["rules", 1, "rule"], "astrology"),
     "rules[1]", ["unknown rule 'astrology'"]),
    (TRANSACTION_KEY, _set(["mode"], "lenient"),
     "mode", ["'lenient' is not one of"]),
]


@pytest.mark.parametrize(("key", "change", "path", "words"), INVALID,
                         ids=[f"{k.split(':')[0]}-{i}" for i, (k, *_rest) in enumerate(INVALID)])
def test_each_kind_of_invalid_config_is_rejected_naming_key_path_and_problem(
        shipped, key, change, path, words):
    with pytest.raises(ConfigError) as caught:
        compile_config(with_change(shipped, key, change))
    error = caught.value
    assert error.key == key
    assert error.path == path
    message = str(error)
    assert message.startswith(f"{key}: ")
    for word in words:
        assert word in message, message


def test_changed_buckets_of_an_existing_metric_are_rejected(shipped):
    manager = ConfigManager(StaticSource(shipped))
    manager.load_all_configuration()
    candidate = with_change(shipped, METRICS_KEY,
                            _set(["extractors", 4, "buckets"], [10, 20, 30]))
    result = manager.reload_configuration(candidate)
    assert not result.ok
    assert result.error.path == "extractors[4].buckets"
    assert "processing_ms" in str(result.error) and "new metric name" in str(result.error)


def test_a_rejected_reload_keeps_the_previous_version_and_is_counted(shipped):
    manager = ConfigManager(StaticSource(shipped))
    before = manager.load_all_configuration()

    bad = with_change(shipped, COMPLIANCE_KEY, _set(["rules", 1, "rule"], "gut_feeling"))
    result = manager.reload_configuration({COMPLIANCE_KEY: bad[COMPLIANCE_KEY]})
    assert not result.ok and result.changed == ()
    assert manager.active is before  # rollback: the old compiled config stays
    assert manager.stats.rejected == 1 and "gut_feeling" in manager.stats.last_error

    good = with_change(shipped, COMPLIANCE_KEY,
                       _set(["rules", 0, "thresholds_minor", "EUR"], 500_000))
    result = manager.reload_configuration({COMPLIANCE_KEY: good[COMPLIANCE_KEY].pushed(2, "t")})
    assert result.ok and result.changed == (COMPLIANCE_KEY,)
    assert manager.active is not before
    assert manager.active.versions[COMPLIANCE_KEY].label == "v2"
    assert manager.active.version.endswith(";compliance=v2")
    assert manager.stats.reloads == 2
    snapshot = manager.snapshot()
    assert snapshot["keys"][COMPLIANCE_KEY]["version"] == 2
    assert snapshot["rejected"] == 1 and snapshot["last_reload_ms"] is not None
    # the new threshold is what the compiled rule now applies
    (large,) = [r for r in manager.get_compliance_rules() if r.kind == "large_amount"]
    assert large.thresholds["EUR"] == 500_000


def test_the_same_documents_again_change_nothing(shipped):
    manager = ConfigManager(StaticSource(shipped))
    active = manager.load_all_configuration()
    result = manager.reload_configuration()
    assert result.ok and result.changed == ()
    assert manager.active is active and manager.stats.reloads == 1


def test_a_bad_source_at_start_up_raises(shipped, tmp_path):
    path = tmp_path / "metrics.yaml"
    path.write_text("extractors: [{extractor: status, dimensions: [[channel]]}]\n  bad: [")
    with pytest.raises(ConfigError, match=r"^metrics:definitions:v1: .*not valid YAML"):
        ConfigManager(FileSource({METRICS_KEY: path})).load_all_configuration()


def test_sync_applies_the_topic_version_once_and_skips_a_rejected_one(shipped):
    manager = ConfigManager(StaticSource(shipped))
    manager.load_all_configuration()
    records: dict[str, Any] = {}
    sync = ConfigSync(manager, records)
    sync.sync()
    assert sync.synced and manager.stats.reloads == 1  # nothing pushed: the source's version

    good = with_change(shipped, COMPLIANCE_KEY, _set(["rules", 4, "threshold"], 0.5))
    records[COMPLIANCE_KEY] = good[COMPLIANCE_KEY].pushed(1, "t").to_record()
    sync.sync()
    sync.sync()
    assert manager.active.versions[COMPLIANCE_KEY].version == 1 and manager.stats.reloads == 2

    bad = with_change(shipped, METRICS_KEY, _set(["extractors", 0, "extractor"], "nope"))
    records[METRICS_KEY] = bad[METRICS_KEY].pushed(1, "t").to_record()
    sync.sync()
    sync.sync()  # not compiled again
    assert manager.stats.rejected == 1
    assert manager.active.versions[METRICS_KEY].version == 0


def _pushed(records: dict[str, Any], version: ConfigVersion) -> None:
    """Append ``version`` to a config topic held as a dict, as ConfigTopic.publish does."""
    records[history_key(version.key, version.version)] = version.to_record()
    records[version.key] = version.to_record()


def _drop_extractor(kind: str):
    def change(doc):
        doc["extractors"] = [e for e in doc["extractors"] if e["extractor"] != kind]
    return change


def test_a_push_is_numbered_after_the_history_and_checked_against_all_of_it(shipped):
    records: dict[str, Any] = {}
    first = plan_push(ConfigRecords(records), dict(shipped), shipped, by="t", comment="c")
    assert [(v.key, v.version) for v in first] == [(k, 1) for k in KEYS]
    for version in first:
        _pushed(records, version)
    assert plan_push(ConfigRecords(records), dict(shipped), shipped, by="t", comment="") == []

    # v2 drops risk_score; its bounds stay known from v1 in the history ...
    dropped = with_change(shipped, METRICS_KEY, _drop_extractor("risk_score"))
    (second,) = plan_push(ConfigRecords(records), {METRICS_KEY: dropped[METRICS_KEY]},
                          shipped, by="t", comment="")
    assert second.version == 2
    _pushed(records, second)
    assert ConfigRecords(records).known_bounds()["risk_score"] == (
        0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
    # ... so bringing it back with other buckets is refused, by the CLI and the watcher alike
    def rebucket(doc):
        for entry in doc["extractors"]:
            if entry["extractor"] == "risk_score":
                entry["buckets"] = [0.5]

    rebucketed = with_change(shipped, METRICS_KEY, rebucket)
    with pytest.raises(ConfigError, match="risk_score"):
        plan_push(ConfigRecords(records), {METRICS_KEY: rebucketed[METRICS_KEY]}, shipped,
                  by="t", comment="")


def test_a_worker_learns_the_bounds_of_the_whole_history_before_it_decodes(shipped):
    """Restarted on a version without ``risk_score``, a worker still knows its buckets."""
    records: dict[str, Any] = {}
    for version in plan_push(ConfigRecords(records), dict(shipped), shipped, by="t",
                             comment=""):
        _pushed(records, version)
    dropped = with_change(shipped, METRICS_KEY, _drop_extractor("risk_score"))
    for version in plan_push(ConfigRecords(records), {METRICS_KEY: dropped[METRICS_KEY]},
                             shipped, by="t", comment=""):
        _pushed(records, version)
    manager = ConfigManager(StaticSource(dropped))  # the files dropped it too
    manager.load_all_configuration()
    assert manager.bounds("risk_score") == ()
    ConfigSync(manager, records).sync()
    assert manager.active.versions[METRICS_KEY].version == 2
    assert len(manager.bounds("risk_score")) == 9


def test_file_source_notices_an_edit(tmp_path):
    paths = {}
    for key, name in ((METRICS_KEY, "metrics.yaml"), (COMPLIANCE_KEY, "compliance.yaml")):
        paths[key] = tmp_path / name
        paths[key].write_text((Path("config") / name).read_text())
    source = FileSource(paths)
    first = source.load()
    assert not source.changed()
    doc = yaml.safe_load(paths[COMPLIANCE_KEY].read_text())
    doc["rules"][0]["thresholds_minor"]["EUR"] = 123_456
    paths[COMPLIANCE_KEY].write_text(yaml.safe_dump(doc))
    assert source.changed()
    second = source.load()
    assert second[COMPLIANCE_KEY].digest != first[COMPLIANCE_KEY].digest
    assert second[METRICS_KEY].digest == first[METRICS_KEY].digest
    # the transaction document is self-contained: its schema file is inlined
    assert second[TRANSACTION_KEY].document["schema"]["type"] == "object"


def test_readers_never_see_a_half_swapped_config_under_concurrent_reloads(shipped):
    manager = ConfigManager(StaticSource(shipped))
    manager.load_all_configuration()
    versions = [with_change(shipped, COMPLIANCE_KEY,
                            _set(["rules", 4, "threshold"], t))[COMPLIANCE_KEY].pushed(n, "t")
                for n, t in ((1, 0.5), (2, 0.6))]
    stop = threading.Event()
    seen: list[str] = []
    errors: list[str] = []

    def reload(version: ConfigVersion) -> None:
        while not stop.is_set():
            manager.reload_configuration({COMPLIANCE_KEY: version})

    def read() -> None:
        while not stop.is_set():
            active = manager.active
            label = active.versions[COMPLIANCE_KEY].label
            (rule,) = [e for e in active.engine.extractors if e.kind == "high_risk_score"]
            expected = {"v1": 0.5, "v2": 0.6}.get(label, 0.8)
            if rule.threshold != expected or active.engine.version != active.version:
                errors.append(label)
            seen.append(label)

    threads = [threading.Thread(target=reload, args=(v,)) for v in versions]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert {"v1", "v2"} <= set(seen)
