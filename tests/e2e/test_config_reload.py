"""A rule pushed while payments flow reaches both workers within seconds, and the switch
loses nothing and counts nothing twice.

Two workers share the partitions; the simulator sends at 2,000 events/s; a lower
large-amount threshold is pushed with ``faust -A app config push``. Then:

* both workers activate the new version within 5 s of the push (seed: 5 s propagation);
* every event is stored exactly once (the usual end-state checks);
* each payment's metrics row records the version it was processed under; per
  partition the versions switch once, in offset order (a batch runs under one version);
* every payment the broker received after both workers switched carries the new
  version, and each version's large-amount flags follow its own threshold.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import assert_end_state, query, read_topic, send

START = datetime(2026, 11, 1, 11, 40, tzinfo=UTC)
KEY = "compliance:rules:v1"
OLD_EUR, NEW_EUR = 1_000_000, 200_000


def lowered_rules(path: Path) -> Path:
    doc = yaml.safe_load(Path("config/compliance.yaml").read_text())
    for rule in doc["rules"]:
        if rule["rule"] == "large_amount":
            rule["thresholds_minor"] = {"EUR": NEW_EUR, "USD": NEW_EUR, "GBP": NEW_EUR,
                                        "JPY": 300_000}
    path.write_text(yaml.safe_dump(doc))
    return path


def test_pushed_rule_reaches_both_workers_within_5s_and_loses_nothing(stack, tmp_path):
    events = list(PaymentGenerator(load_scenario(), seed=52, invalid_ratio=0.02, start=START)
                  .events(40_000))
    workers = [stack.start_worker("w1", PARQUET_FLUSH_SECONDS="1")]
    send(stack, events[:6_000])
    stack.wait_until_committed(6_000, timeout=120)
    workers.append(stack.start_worker("w2", PARQUET_FLUSH_SECONDS="1"))
    deadline = time.monotonic() + 90
    while not workers[1].stats()["assigned"]:
        assert time.monotonic() < deadline, "the second worker was never assigned a partition"
        time.sleep(0.5)
    while not all(w.get("/payments/config/")["version"] for w in workers):
        assert time.monotonic() < deadline, "a worker never loaded its configuration"
        time.sleep(0.2)
    before = workers[0].get("/payments/config/")["version"]
    assert before == workers[1].get("/payments/config/")["version"]
    assert ";compliance=files:" in before

    # Payments flow before the push and go on after both workers switched: the sender
    # sends a first part, then waits for the test to say the switch happened (an event
    # the test controls, so a slow machine cannot finish the stream before the switch).
    switched_both = threading.Event()

    def sender_body() -> None:
        send(stack, events[6_000:12_000], 2_000)
        switched_both.wait(timeout=600)
        send(stack, events[12_000:], 2_000)

    sender = threading.Thread(target=sender_body)
    sender.start()
    stack.wait_until_committed(7_000, timeout=120)  # payments are flowing
    done = stack.cli("config", "push", KEY, "--comment", "lower large-amount threshold",
                     COMPLIANCE_CONFIG=str(lowered_rules(tmp_path / "compliance.yaml")))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{KEY}: pushed v1" in done.stdout
    history = stack.cli("config", "history", KEY, "--json")
    (pushed,) = __import__("json").loads(history.stdout)
    pushed_at = datetime.fromisoformat(pushed["pushed_at"])

    applied = []
    for worker in workers:
        config = worker.wait_for_config(lambda c: c["keys"][KEY]["version"] == 1,
                                        "v1 not applied")
        assert config["rejected"] == 0
        applied.append(datetime.fromisoformat(config["last_reload_at"]))
    propagation = (max(applied) - pushed_at).total_seconds()
    print(f"config push -> applied on both workers: {propagation * 1000:.0f} ms")
    assert 0 <= propagation < 5.0
    after = workers[0].get("/payments/config/")["version"]
    assert after == before.replace(before.split(";")[2], "compliance=v1")
    switched_both.set()  # the rest of the stream comes after the switch
    sender.join()

    stack.wait_until_committed(len(events), timeout=240)
    assert_end_state(stack, events)

    rows = query(stack.database_url, """
        SELECT t.source_partition, t.source_offset, t.amount_minor, t.currency,
               m.config_version,
               coalesce((c.metric_data ->> 'compliance_large_amount')::int, 0),
               coalesce(c.config_version, m.config_version)
        FROM normalized_transactions t
        JOIN dynamic_metrics m ON m.transaction_id = t.transaction_id
                              AND m.metric_type = 'metrics'
        LEFT JOIN dynamic_metrics c ON c.transaction_id = t.transaction_id
                                   AND c.metric_type = 'compliance'
        ORDER BY 1, 2""")
    assert {r[4] for r in rows} == {before, after}
    by_partition: dict[int, list[str]] = {}
    for partition, _offset, amount, currency, version, flagged, version_c in rows:
        assert version_c == version
        by_partition.setdefault(partition, []).append(version)
        threshold = {"EUR": NEW_EUR, "USD": NEW_EUR, "GBP": NEW_EUR, "JPY": 300_000} \
            if version == after else {"EUR": OLD_EUR, "USD": OLD_EUR, "GBP": OLD_EUR,
                                      "JPY": 1_500_000}
        limit = threshold.get(currency)
        assert flagged == int(limit is not None and amount >= limit), (version, amount, currency)
    for versions in by_partition.values():  # one switch per partition, in offset order
        switch = versions.index(after) if after in versions else len(versions)
        assert set(versions[:switch]) <= {before} and set(versions[switch:]) <= {after}
    assert any(after in v for v in by_partition.values())

    records = asyncio.run(read_topic(stack.broker.bootstrap, "payments"))
    received = {(r.partition, r.offset): r.timestamp / 1000 for r in records}
    switched = max(applied).timestamp()
    late_rows = [r for r in rows if received[(r[0], r[1])] > switched + 0.001]
    assert late_rows, "payments were sent after the switch"
    assert {r[4] for r in late_rows} == {after}
    flagged_new = sum(r[5] for r in rows if r[4] == after)
    assert flagged_new > 0
