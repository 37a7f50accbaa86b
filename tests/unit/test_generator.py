"""The simulator's events: deterministic, in the wire format, invalid when asked."""

from __future__ import annotations

from collections import Counter

import pytest

from models.events import ParsedTransaction
from simulator.__main__ import main
from simulator.generator import PaymentGenerator, ScenarioError, load_scenario
from tests.helpers import parse


def test_same_seed_same_events():
    a = [e.value for e in PaymentGenerator(load_scenario(), seed=5, invalid_ratio=0.1).events(300)]
    b = [e.value for e in PaymentGenerator(load_scenario(), seed=5, invalid_ratio=0.1).events(300)]
    c = [e.value for e in PaymentGenerator(load_scenario(), seed=6, invalid_ratio=0.1).events(300)]
    assert a == b
    assert a != c


def test_valid_events_pass_and_invalid_events_fail():
    events = list(PaymentGenerator(load_scenario(), seed=1, invalid_ratio=0.2).events(2000))
    kinds = Counter(e.kind for e in events)
    assert 300 < sum(n for k, n in kinds.items() if k != "valid") < 500
    for e in events:
        result = parse(e.value)
        if e.kind == "valid":
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
