"""Bad messages end in failed_items and the DLQ once each; a replay counts them once."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from datetime import UTC, datetime

import yaml

from config import CONFIG_DIR
from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import query, read_topic, send

START = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)


def strict_config(tmp_path):
    """The shipped config plus a rule that wrongly rejects JPY (the "bug" to fix later)."""
    config = yaml.safe_load((CONFIG_DIR / "validation.yaml").read_text())
    config["schema"] = str(CONFIG_DIR / "schemas" / "transaction-v1.json")
    config["rules"].append({"rule": "allowed_values", "field": "currency",
                            "values": ["EUR", "USD", "GBP"]})
    path = tmp_path / "strict.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_failures_are_kept_once_and_a_replay_after_the_fix_counts_them_once(stack, tmp_path):
    scenario = load_scenario()
    scenario["duplicate_ratio"] = 0.02
    events = list(PaymentGenerator(scenario, seed=61, invalid_ratio=0.05, start=START)
                  .events(6000))
    jpy = [e for e in events if e.kind == "valid" and e.payload["currency"] == "JPY"]
    assert jpy and any(e.kind == "duplicate" for e in events)

    worker = stack.start_worker("w1", VALIDATION_CONFIG=str(strict_config(tmp_path)),
                                PARQUET_FLUSH_SECONDS="1")
    send(stack, events)
    stack.wait_until_committed(len(events), timeout=240)
    assert worker.alive()

    url = stack.database_url
    accepted = {r[0] for r in query(url, "SELECT transaction_id FROM normalized_transactions")}
    assert accepted == {e.payload["transaction_id"] for e in events
                        if e.kind == "valid" and e.payload["currency"] != "JPY"}
    failed = query(url, "SELECT id, raw_payload, error_category, error_message, source_partition,"
                        " source_offset, errors FROM failed_items")
    rejected = [e for e in events if e.kind != "valid" or e.payload["currency"] == "JPY"]
    assert Counter(bytes(r[1]) for r in failed) == Counter(e.value for e in rejected)
    categories = Counter(r[2] for r in failed)
    assert categories["rule"] >= len(jpy) and categories["duplicate"] > 0
    assert all(r[3] and r[6] for r in failed)  # a message and structured errors, always

    dlq = asyncio.run(read_topic(stack.broker.bootstrap, "payments-dlq"))
    assert len(dlq) == len(failed)  # once each: no crash in this run
    by_key = {r.key: json.loads(r.value) for r in dlq}
    for row in failed:
        record = by_key[f"payments-{row[4]}-{row[5]}".encode()]
        assert base64.b64decode(record["raw_payload_b64"]) == bytes(row[1])
        assert record["error_category"] == row[2]

    # the operator's view
    listed = stack.cli("failed", "list", "--category", "rule", "--limit", "5")
    assert listed.returncode == 0, listed.stderr
    assert "currency must be one of" in listed.stdout and "matching" in listed.stderr
    shown = stack.cli("failed", "show", str(failed[0][0]))
    assert shown.returncode == 0 and "payload" in shown.stdout
    export = tmp_path / "failed.jsonl"
    assert stack.cli("failed", "export", "--output", str(export)).returncode == 0
    assert len(export.read_text().splitlines()) == len(failed)

    # fix the config (back to the shipped one) and replay what the rule rejected
    worker.stop()
    worker = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="1")
    selection = ("--category", "rule", "--field", "currency")
    dry = stack.cli("failed", "replay", *selection, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    # the JPY payments and the simulator's resends of them
    jpy_dups = sum(e.kind == "duplicate" and e.payload["currency"] == "JPY" for e in events)
    n = len(jpy) + jpy_dups
    assert f"dry run: {n} selected ({n} now passes)" in dry.stderr
    replay = stack.cli("failed", "replay", *selection)
    assert replay.returncode == 0, replay.stderr
    stack.wait_until_committed(len(events) + n, timeout=120)

    # a second replay of the same items: every one is now a duplicate, nothing counts twice
    again = stack.cli("failed", "replay", *selection)
    assert "replayed 0 of 0 selected" in again.stderr  # already replayed: skipped
    forced = stack.cli("failed", "replay", *selection, "--force")
    assert forced.returncode == 0, forced.stderr
    stack.wait_until_committed(len(events) + 2 * n, timeout=120)
    assert worker.alive()

    accepted = {r[0] for r in query(url, "SELECT transaction_id FROM normalized_transactions")}
    assert accepted == {e.payload["transaction_id"] for e in events if e.kind == "valid"}
    replays = query(url, "SELECT retry_count, error_category FROM failed_items "
                         "WHERE replay_of IS NOT NULL")
    # first replay: each resend finds its original; forced replay: every item is a duplicate
    assert Counter(r[0] for r in replays) == Counter({1: jpy_dups, 2: n})
    assert {r[1] for r in replays} == {"duplicate"}
    # replayed payments are hours behind the stream: left out of the windows as late,
    # so every accepted payment is counted once, in a window or as late
    windows = query(url, "SELECT sum(tx_count) FROM payment_metrics_5m")[0][0]
    late = query(url, "SELECT coalesce(sum(count), 0) FROM aggregate_histograms "
                      "WHERE metric_type = 'late_events' AND window_seconds = 300")[0][0]
    assert 0 < late <= len(jpy)
    assert windows + late == sum(e.kind == "valid" for e in events)
