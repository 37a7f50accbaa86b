"""The alert rules and the Grafana dashboard in deploy/: syntax, PromQL, runbooks, SQL."""

from __future__ import annotations

import json
import re

import pytest

from models.db import Base
from tests.helpers import (
    ALERT_RULES,
    GRAFANA_DASHBOARD,
    alert_rules,
    dashboard_exprs,
    promql_names,
)

OPERATIONS = ALERT_RULES.parents[2] / "docs" / "operations.md"
DURATION = re.compile(r"^\d+[smhd]$")


def test_every_rule_is_well_formed_and_has_a_runbook():
    rules = alert_rules()
    assert {r["alert"] for r in rules} >= {
        "PaymentMonitorLagGrowing", "PaymentMonitorNoPaymentsWhileLag",
        "PaymentMonitorFailureRateHigh", "PaymentMonitorDatabaseRetrying",
        "PaymentMonitorWorkerNotReady", "PaymentMonitorWorkerStalled",
        "PaymentMonitorWorkerDown", "PaymentMonitorNoWorkerUp"}
    headings = {line.lstrip("#").strip().lower()
                for line in OPERATIONS.read_text().splitlines() if line.startswith("#")}
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert DURATION.match(rule.get("for", "0s")), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert promql_names(rule["expr"]), rule["alert"]  # parses, and selects something
        anchor = rule["annotations"]["runbook"].split("#", 1)[1]
        assert anchor == rule["alert"].lower() and anchor in headings, rule["alert"]


@pytest.mark.parametrize("expr", ["sum(rate(x[5m]) > ", "payment_monitor_ready =! 0"])
def test_the_parser_refuses_bad_promql(expr):
    with pytest.raises(Exception):  # noqa: B017 - promql-parser raises its own types
        promql_names(expr)


def test_dashboard_panels_parse_and_name_real_tables():
    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for expr in dashboard_exprs():
        assert all(n.startswith("payment_monitor_") for n in promql_names(expr)), expr
    tables = set(Base.metadata.tables)
    sql = [t["rawSql"] for p in dashboard["panels"] for t in p.get("targets", ())
           if "rawSql" in t]
    assert sql
    for text in sql:
        (table,) = re.findall(r"FROM (\w+)", text)
        assert table in tables, table


def test_the_dashboard_provisions_from_a_file_and_every_query_is_scoped():
    """No import-time inputs (file provisioning cannot fill them): data sources and the
    namespace and job are variables, and every selector carries both."""
    import promql_parser

    dashboard = json.loads(GRAFANA_DASHBOARD.read_text())
    assert "__inputs" not in dashboard and "${DS_" not in GRAFANA_DASHBOARD.read_text()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == variables["postgres"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"namespace", "job"} <= set(variables)
    sources = {t.get("datasource", p.get("datasource"))["uid"] for p in dashboard["panels"]
               for t in p.get("targets", ())}
    assert sources == {"${datasource}", "${postgres}"}

    def selectors(node):
        if type(node).__name__ == "VectorSelector":
            yield node
        for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, str | int | float):
                yield from selectors(child)
        for arg in getattr(node, "args", None) or ():
            yield from selectors(arg)

    exprs = dashboard_exprs()
    checked = 0
    for expr in exprs:
        for selector in selectors(promql_parser.parse(expr)):
            matchers = {(m.name, m.value) for m in selector.matchers.matchers}
            assert {("namespace", "$namespace"), ("job", "$job")} <= matchers, expr
            checked += 1
    assert checked >= len(exprs) > 10
