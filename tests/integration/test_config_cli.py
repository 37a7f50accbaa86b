"""``faust -A app config``: push, show, diff, history, rollback against the real broker."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import yaml

from devtools.stack import FAUST

KEY = "compliance:rules:v1"


@pytest.fixture
def cli(broker, tmp_path):
    app_id = f"pm-config-{uuid.uuid4().hex[:6]}"  # its own config topic
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(BROKER_URL=broker.url, APP_ID=app_id)

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([FAUST, "-A", "app", "config", *args], env={**env, **extra},
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)

    return run


def rules(tmp_path: Path, name: str, change) -> str:
    doc = yaml.safe_load(Path("config/compliance.yaml").read_text())
    change(doc)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def threshold(value):
    def change(doc):
        doc["rules"][0]["thresholds_minor"]["EUR"] = value
    return change


def test_push_show_diff_history_rollback(cli, tmp_path):
    nothing = cli("history")
    assert nothing.returncode == 0 and "nothing pushed yet" in nothing.stdout

    first = cli("push")  # every key, from the shipped files
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("pushed v1") == 3
    again = cli("push")
    assert again.returncode == 0 and again.stdout.count("unchanged (v1)") == 3
    same = cli("diff")
    assert same.stdout.strip() == "no differences between the topic and files"

    lower = rules(tmp_path, "lower.yaml", threshold(500_000))
    diff = cli("diff", KEY, COMPLIANCE_CONFIG=lower)
    assert "-    EUR: 1000000\n+    EUR: 500000\n" in diff.stdout, diff.stdout
    dry = cli("push", KEY, "--dry-run", COMPLIANCE_CONFIG=lower)
    assert f"{KEY}: would push v2 (was v1)" in dry.stdout
    pushed = cli("push", KEY, "--comment", "lower EUR", COMPLIANCE_CONFIG=lower)
    assert f"{KEY}: pushed v2 (was v1)" in pushed.stdout, pushed.stderr

    shown = cli("show", KEY)
    assert shown.stdout.startswith(f"# {KEY} v2 ")
    assert yaml.safe_load(shown.stdout)["rules"][0]["thresholds_minor"]["EUR"] == 500_000
    old = cli("show", KEY, "--version", "1", "--json")
    assert json.loads(old.stdout)[0]["document"]["rules"][0]["thresholds_minor"]["EUR"] \
        == 1_000_000

    back = cli("rollback", KEY, "--to", "1")
    assert f"{KEY}: pushed v3 = v1 (was v2)" in back.stdout, back.stderr
    history = json.loads(cli("history", KEY, "--json").stdout)
    assert [(h["version"], h["comment"]) for h in history] == [
        (1, "from files"), (2, "lower EUR"), (3, "rollback to v1")]
    assert history[2]["digest"] == history[0]["digest"]
    text = cli("history", KEY).stdout.splitlines()
    assert text[-1].startswith(f"* {KEY}") and " v3 " in text[-1]


def test_an_invalid_push_is_refused_and_publishes_nothing(cli, tmp_path):
    assert cli("push").returncode == 0
    bad = rules(tmp_path, "bad.yaml", threshold(-1))
    refused = cli("push", KEY, COMPLIANCE_CONFIG=bad)
    assert refused.returncode == 2
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert line == ("error: rejected, nothing published: compliance:rules:v1: "
                    "rules[0].thresholds_minor.EUR: -1 is less than the minimum of 1")
    assert "Traceback" not in refused.stderr
    assert [h["version"] for h in json.loads(cli("history", KEY, "--json").stdout)] == [1]

    missing = cli("rollback", KEY, "--to", "7")
    assert missing.returncode == 2 and "has no version 7 (pushed: v1)" in missing.stderr
    unknown = cli("show", "metrics:definitions:v9")
    assert unknown.returncode == 2 and "unknown key 'metrics:definitions:v9'" in unknown.stderr


def test_changing_the_buckets_of_a_pushed_metric_is_refused(cli, tmp_path):
    assert cli("push").returncode == 0
    doc = yaml.safe_load(Path("config/metrics.yaml").read_text())
    doc["extractors"][4]["buckets"] = [10, 100, 1000]
    path = tmp_path / "metrics.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused = cli("push", "metrics:definitions:v1", METRICS_CONFIG=str(path))
    assert refused.returncode == 2
    assert ("metrics:definitions:v1: extractors[4].buckets: metric 'processing_ms' had "
            "buckets") in refused.stderr


def test_an_unreachable_broker_is_one_line(cli):
    down = cli("history", BROKER_URL="kafka://127.0.0.1:9")
    assert down.returncode == 2
    assert "error: cannot reach the broker at 127.0.0.1:9" in down.stderr
    assert "Traceback" not in down.stderr


def validation(tmp_path: Path, name: str, *rules_: dict) -> str:
    doc = yaml.safe_load(Path("config/validation.yaml").read_text())
    doc["schema"] = str(Path("config/schemas/transaction-v1.json").resolve())
    doc["rules"].extend(rules_)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def test_a_validation_push_is_tried_on_recent_payments_and_a_mass_rejection_needs_force(
        cli, broker, tmp_path):
    import asyncio

    from simulator.generator import PaymentGenerator, load_scenario
    from simulator.producer import ensure_topic, produce

    events = list(PaymentGenerator(load_scenario(), seed=23).events(400))
    asyncio.run(ensure_topic(broker.bootstrap, "payments", 4))
    asyncio.run(produce(events, broker=broker.bootstrap, topic="payments", total=len(events),
                        rate=0, progress=False))
    key = "schemas:transaction:v1"
    # a rule that rejects every payment: refused, and it says why and how to override
    everything = validation(tmp_path, "all.yaml", {"rule": "allowed_values",
                                                  "field": "currency", "values": ["XXX"]})
    refused = cli("push", key, VALIDATION_CONFIG=everything)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "recent payments: rejects" in refused.stdout
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert "that the shipped version accepts" in line and "--force" in line
    assert "nothing pushed yet" in cli("history").stdout
    forced = cli("push", key, "--force", VALIDATION_CONFIG=everything)
    assert forced.returncode == 0 and f"{key}: pushed v1" in forced.stdout, forced.stderr
    # a harmless rule passes the trial; a catastrophic pattern is harmless on RE2
    harmless = validation(tmp_path, "ok.yaml", {"rule": "pattern", "field": "merchant_id",
                                               "pattern": "^(a+)+$|^m.*"})
    assert cli("push", key, "--force", VALIDATION_CONFIG=harmless).returncode == 0
    tried = cli("push", key, VALIDATION_CONFIG=validation(tmp_path, "ok2.yaml"))
    assert tried.returncode == 0, tried.stderr
    assert "0 of them newly (0.0%)" in tried.stdout


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d["rules"].append({"rule": "pattern", "field": "merchant_id",
                                  "pattern": "^(a)\\1$"}), "linear-time engine (RE2)"),
    (lambda d: d["schema"]["properties"]["currency"].pop("type"),
     "schema.properties.currency.type: must be 'string'"),
    (lambda d: d["schema"]["properties"]["amount_minor"].update(type="number"),
     "schema.properties.amount_minor.type: must be 'integer'"),
    (lambda d: d["schema"]["properties"]["status"].update(enum=["approved", "refunded"]),
     "schema.properties.status: must keep to the contract's values"),
    (lambda d: d["schema"]["properties"]["merchant_id"].update(pattern="(?=m)m+"),
     "linear-time engine (RE2)"),
    (lambda d: d["rules"].append({"rule": "event_time_skew", "max_future_seconds": ".inf"}),
     "max_future_seconds must be a number"),
])
def test_a_validation_config_that_could_stop_the_fleet_is_refused(cli, tmp_path, change, words):
    doc = yaml.safe_load(Path("config/validation.yaml").read_text())
    doc["schema"] = json.loads(Path("config/schemas/transaction-v1.json").read_text())
    change(doc)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(doc))
    refused = cli("push", "schemas:transaction:v1", "--dry-run", VALIDATION_CONFIG=str(path))
    assert refused.returncode == 2, refused.stdout
    (line,) = [x for x in refused.stderr.splitlines() if x.startswith("error:")]
    assert words in line, line


def test_a_yaml_alias_bomb_is_refused_at_once(cli, tmp_path):
    levels = ["a: &a [" + ",".join(['"lol"'] * 9) + "]"]
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(levels) + "\n")
    refused = cli("push", KEY, "--dry-run", COMPLIANCE_CONFIG=str(path))
    assert refused.returncode == 2
    assert "expands to more than" in refused.stderr or "aliases" in refused.stderr
