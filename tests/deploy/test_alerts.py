"""The alert rules, by Prometheus's own promtool: they load, and each fires in the case
it is written for and stays silent in its near miss (deploy/prometheus/alerts.test.yaml)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.helpers import ALERT_RULES, TOOLS, alert_rules, tool

PROMTOOL = TOOLS / "bin" / "promtool"
RULE_TESTS = ALERT_RULES.with_name("alerts.test.yaml")


def promtool(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool(PROMTOOL), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120, check=False)


def test_promtool_loads_the_rules():
    out = promtool("check", "rules", ALERT_RULES, cwd=ALERT_RULES.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in out.stdout


def test_every_rule_fires_and_stays_silent_as_its_unit_tests_say():
    out = promtool("test", "rules", RULE_TESTS, cwd=RULE_TESTS.parent)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


def test_every_rule_has_a_firing_case_and_a_silent_one():
    cases = [c for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
             for c in t["alert_rule_test"]]
    fires = {c["alertname"] for c in cases if c["exp_alerts"]}
    silent = {c["alertname"] for c in cases if not c["exp_alerts"]}
    names = {r["alert"] for r in alert_rules()}
    assert names - fires == set()
    assert names - silent == set()


def test_the_unit_tests_catch_a_changed_rule(tmp_path):
    """A threshold and a `for` changed in a copy of the rules: promtool reports both."""
    shutil.copy(RULE_TESTS, tmp_path)
    rules = ALERT_RULES.read_text()
    changed = rules.replace("> 0.05", "> 0.07")
    changed = re.sub(r"(expr: payment_monitor_ready == 0\n\s+)for: 5m", r"\1for: 10m", changed)
    assert changed.count("\n") == rules.count("\n") and changed != rules
    (tmp_path / ALERT_RULES.name).write_text(changed)
    out = promtool("test", "rules", tmp_path / RULE_TESTS.name, cwd=tmp_path)
    report = out.stdout + out.stderr
    assert out.returncode != 0
    assert "alertname: PaymentMonitorFailureRateHigh" in report
    assert "alertname: PaymentMonitorWorkerNotReady" in report
