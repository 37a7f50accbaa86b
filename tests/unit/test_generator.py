"""The simulator's events: deterministic, in the wire format, invalid when asked."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from models.events import ParsedTransaction
from simulator.__main__ import main
from simulator.generator import PaymentGenerator, ScenarioError, load_scenario
from tests.helpers import parse


def test_same_seed_same_events():
    def values(seed):
        return [e.value for e in PaymentGenerator(load_scenario(), seed=seed, invalid_ratio=0.1,
                                                  start=PINNED).events(300)]

    a, b, c = values(5), values(5), values(6)
    assert a == b
    assert a != c


def test_valid_events_pass_and_invalid_events_fail():
    events = list(PaymentGenerator(load_scenario(), seed=1, invalid_ratio=0.2).events(2000))
    kinds = Counter(e.kind for e in events)
    assert 300 < sum(n for k, n in kinds.items() if k != "valid") < 500
    for e in events:
        result = parse(e.value)
        if e.kind in ("valid", "duplicate"):  # a duplicate is valid, its id is not new
            assert isinstance(result.transaction, ParsedTransaction), (e.value, result)
        else:
            assert not result.ok and result.errors, e.value


def test_events_are_keyed_by_merchant():
    for e in PaymentGenerator(load_scenario(), seed=2).events(50):
        assert e.payload is not None and e.key == e.payload["merchant_id"].encode()


def test_missing_scenario_is_a_clear_error(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read scenario"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("merchants: 3\n")
    with pytest.raises(ScenarioError, match="lacks: customers"):
        load_scenario(bad)


def test_cli_reports_bad_arguments_without_traceback(capsys):
    assert main(["--invalid-ratio", "2", "--count", "1"]) == 2
    assert "invalid ratio" in capsys.readouterr().err


def test_cli_dump_prints_json_lines(capsys):
    assert main(["--dump", "3", "--seed", "9"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("{") for line in lines)


PINNED = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)


def test_events_are_dated_up_to_now_unless_the_scenario_pins_a_date():
    before = datetime.now(UTC).replace(microsecond=0)
    on_time = load_scenario()
    on_time["late_event_ratio"] = 0.0
    events = list(PaymentGenerator(on_time, seed=3).events(1000))  # 200/s: 5 s
    times = [datetime.fromisoformat(e.payload["event_time"].replace("Z", "+00:00"))
             for e in events if e.kind == "valid"]
    assert before - timedelta(seconds=6) <= min(times)
    assert max(times) <= datetime.now(UTC)
    scenario = load_scenario()
    scenario["start_time"] = "2026-05-01T09:00:00Z"
    pinned = next(PaymentGenerator(scenario, seed=3).events(1))
    assert pinned.payload["event_time"].startswith("2026-05-01T09:00:00")


def test_bursts_runs_and_resends_the_rules_and_the_claims_must_catch():
    """A velocity burst: one customer, several merchants, within its span; a structuring
    run: amounts in the band under the limit; a re-send: an earlier record under another
    merchant's key. Every pattern payment is sent, within the count."""
    scenario = load_scenario()
    scenario["resent_across_partitions"] = 0.002
    events = list(PaymentGenerator(scenario, seed=3, start=PINNED).events(20_000))
    assert len(events) == 20_000
    by_pattern: dict[str, list] = {}
    for e in events:
        by_pattern.setdefault(e.pattern, []).append(e)
    bursts = Counter(e.payload["customer_id"] for e in by_pattern["velocity_burst"])
    assert max(bursts.values()) >= 6
    busiest = [e.payload for e in by_pattern["velocity_burst"]
               if e.payload["customer_id"] == bursts.most_common(1)[0][0]]
    assert len({p["merchant_id"] for p in busiest}) > 1, "across merchants"
    assert all(e.key == e.payload["merchant_id"].encode() for e in by_pattern["velocity_burst"])
    limits = scenario["structuring_runs"]["thresholds_minor"]
    for e in by_pattern["structuring_run"]:
        limit = limits[e.payload["currency"]]
        assert 0.9 * limit <= e.payload["amount_minor"] < limit
    sent = {e.value: e.key for e in events if e.kind == "valid"}
    for e in by_pattern["other_partition"]:
        assert e.kind == "duplicate" and e.value in sent and sent[e.value] != e.key


def test_a_pattern_with_a_bad_setting_is_one_clear_error():
    scenario = {**load_scenario(), "velocity_bursts": {"ratio": 0.1, "payments": "many"}}
    with pytest.raises(ScenarioError, match="velocity_bursts"):
        list(PaymentGenerator(scenario, seed=1).events(10))
