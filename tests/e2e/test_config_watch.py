"""Development hot reload: with CONFIG_WATCH the leader pushes each valid edit of the
files to the config topic; an invalid edit is rejected and counted, the old version
stays; a worker whose files are invalid at start refuses to start, saying why."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

KEY = "compliance:rules:v1"


def write_rules(path: Path, eur: int) -> None:
    doc = yaml.safe_load(Path("config/compliance.yaml").read_text())
    doc["rules"][0]["thresholds_minor"]["EUR"] = eur
    path.write_text(yaml.safe_dump(doc))


def test_file_edits_are_pushed_by_the_watcher_and_bad_ones_rejected(stack, tmp_path):
    rules = tmp_path / "compliance.yaml"
    write_rules(rules, 1_000_000)
    env = {"COMPLIANCE_CONFIG": str(rules), "CONFIG_WATCH": "true",
           "CONFIG_SOURCE_POLL_S": "0.5"}
    worker = stack.start_worker("w1", **env)
    worker.wait_for_config(lambda c: c["version"] is not None, "the worker never loaded its config")

    write_rules(rules, 400_000)
    started = time.monotonic()
    config = worker.wait_for_config(lambda c: c["keys"][KEY]["version"] == 1,
                      "the edit was not pushed and applied")
    print(f"file edit -> applied: {(time.monotonic() - started) * 1000:.0f} ms")
    assert config["keys"][KEY]["pushed_by"].startswith("files watcher")
    history = stack.cli("config", "history", KEY)
    assert " v1 " in history.stdout and "from files" in history.stdout

    rules.write_text(rules.read_text().replace("EUR: 400000", "EUR: -3"))
    config = worker.wait_for_config(lambda c: c["rejected"] >= 1, "the bad edit was not rejected")
    assert config["keys"][KEY]["version"] == 1  # the previous version stays active
    assert "rules[0].thresholds_minor.EUR: -3 is less than the minimum of 1" in \
        config["last_error"]
    assert " v2 " not in stack.cli("config", "history", KEY).stdout  # nothing pushed
    assert worker.alive()


def test_a_worker_with_an_invalid_config_refuses_to_start(stack, tmp_path):
    bad = tmp_path / "metrics.yaml"
    bad.write_text(Path("config/metrics.yaml").read_text().replace(
        "extractor: risk_score", "extractor: tea_leaves"))
    worker = stack.start_worker("w1", METRICS_CONFIG=str(bad))
    assert worker.proc is not None
    worker.proc.wait(60)
    assert worker.proc.returncode != 0
    log = worker.log_path.read_text()
    assert ("the worker cannot start: metrics:definitions:v1: extractors[6]: unknown "
            "extractor 'tea_leaves'") in log
    assert "does not hold every key" in log


def test_a_worker_with_an_invalid_config_runs_the_topics_versions(stack, tmp_path):
    assert stack.cli("config", "push").returncode == 0  # v1 of every key
    bad = tmp_path / "metrics.yaml"
    bad.write_text(Path("config/metrics.yaml").read_text().replace(
        "extractor: risk_score", "extractor: tea_leaves"))
    worker = stack.start_worker("w1", METRICS_CONFIG=str(bad))
    config = worker.wait_for_config(lambda c: c["version"] is not None, "no configuration loaded")
    assert config["version"] == "schema=v1;metrics=v1;compliance=v1"
    assert worker.alive()
    assert "the source's configuration is invalid" in worker.log_path.read_text()
