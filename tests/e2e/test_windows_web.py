"""The live tables in the web UI: JSON views, the dashboard in a real browser, recovery
of the windows from their changelogs, and views answered across two workers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest

from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import query, send, shipped_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def windows(worker, table: str) -> list:
    return get(f"{worker.web_url}/payments/tables/{table}/windows/?limit=50")["windows"]


def wait_for(predicate, timeout: float = 60, what: str = "condition"):
    """Poll ``predicate``; a 503 (a worker still starting) counts as not yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except urllib.error.HTTPError as exc:
            if exc.code != 503:
                raise
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_web_views_dashboard_recovery_and_two_workers(stack):
    scenario = load_scenario()
    scenario["late_event_ratio"] = 0.0
    scenario["events_per_second"] = 5  # 800 s of event time: three 5-minute windows
    events = list(PaymentGenerator(scenario, seed=31,
                                   start=datetime(2026, 11, 1, 10, 0, tzinfo=UTC)).events(4000))
    w1 = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="1")
    send(stack, events)
    stack.wait_until_committed(len(events), timeout=180)

    tables = {t["name"]: t for t in get(f"{w1.web_url}/payments/tables/")["tables"]}
    assert {"window-counts-5m", "window-metrics-1h", "stream-clock"} <= set(tables)
    assert tables["window-metrics-5m"]["window_seconds"] == 300

    # the 5-minute counts per channel equal payment_metrics_5m
    counts = windows(w1, "window-counts-5m")
    got = {(w["window_start"], ch): v["tx_count"] for w in counts
           for ch, v in w["values"].items()}
    want = {(r[0].isoformat(), r[1]): r[2] for r in query(
        stack.database_url, "SELECT window_start, channel, tx_count FROM payment_metrics_5m")}
    assert got == want and sum(got.values()) == len(events)

    # histograms equal aggregate_histograms; one key across its windows
    metrics = windows(w1, "window-metrics-1h")
    rows = {(r[0], r[1].isoformat()): (r[2], r[3]) for r in query(
        stack.database_url, "SELECT metric_type || '|' || dimension, time_window, count, p95 "
                            "FROM aggregate_histograms WHERE window_seconds = 3600")}
    for w in metrics:
        for key, h in w["values"].items():
            count, p95 = rows[(key, w["window_start"])]
            assert h["count"] == count and h["p95"] == pytest.approx(p95)
    series = get(f"{w1.web_url}/payments/tables/window-metrics-5m/series/"
                 f"?key=processing_ms|channel=pos")["windows"]
    assert len(series) >= 2 and all(s["value"]["count"] > 0 for s in series)
    clock = get(f"{w1.web_url}/payments/tables/stream-clock/keys/0/")["value"]
    assert clock["last_offset"] >= 0

    # the dashboard, rendered by headless Chromium, shows the current window's numbers
    assert CHROMIUM, "chromium is not installed (make install installs it)"
    page = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=8000",
         "--dump-dom", f"{w1.web_url}/payments/dashboard/"],
        capture_output=True, text=True, timeout=60, check=True).stdout
    current = counts[0]
    for channel, value in current["values"].items():
        assert f'data-channel="{channel}"><td>{channel}</td><td>{value["tx_count"]:,}</td>' \
            in page, f"{channel} row missing from the rendered dashboard"
    assert "Current 5-minute window from " + current["window_start"] in page
    config = get(f"{w1.web_url}/payments/config/")
    label = config["keys"]["compliance:rules:v1"]["label"]
    assert f"Configuration {config['version']}" in page
    assert f"<td>compliance:rules:v1</td><td>{label}</td><td>files</td>" in page
    # the trend: one row per 5-minute window with its payments, and the probes
    for window in counts:
        total = sum(v["tx_count"] for v in window["values"].values())
        start = window["window_start"]
        row = (f'data-window="{start}"><td>{start[:16].replace("T", " ")}</td>'
               f"<td>{total:,}</td>")
        assert row in page, f"trend row of {start} missing"
    assert '<tr data-check="ready"><td>ready</td><td class="ok">ok</td>' in page
    # the flags section: per rule and 5-minute window, the flags PostgreSQL holds for the
    # window's event times (no late events here); and the newest open flags
    per_window = {(r[0].isoformat(), r[1]): r[2] for r in query(
        stack.database_url, "SELECT to_timestamp(floor(extract(epoch FROM event_time) / 300) "
                            "* 300), rule, count(*) FROM compliance_flags GROUP BY 1, 2")}
    assert per_window, "the simulator's traffic trips some rule"
    header = re.search(r'<table id="flag-trend"><tr><th>window \(UTC\)</th>(.*?)</tr>', page)
    assert header, "flags section missing"
    rules = re.findall(r"<th>(\w+)</th>", header.group(1))
    assert rules == sorted(e.kind for e in shipped_config().engine.extractors if e.is_rule)
    for window in counts:
        start = window["window_start"]
        cells = "".join(f"<td>{per_window.get((start, r), 0):,}</td>" for r in rules)
        assert f'data-window="{start}"><td>{start[:16].replace("T", " ")}</td>{cells}</tr>' \
            in page, f"flag counts of {start} missing or wrong"
    newest = query(stack.database_url, "SELECT transaction_id, rule FROM compliance_flags "
                                       "ORDER BY event_time DESC, transaction_id DESC, "
                                       "rule DESC LIMIT 10")
    for tx_id, rule in newest:
        assert f'data-flag="{tx_id}|{rule}"' in page, (tx_id, rule)
    assert '<table id="lag">' in page

    # recovery: the RocksDB files are gone; the changelogs give the same values back
    before = {t: windows(w1, t) for t in ("window-counts-5m", "window-metrics-5m",
                                          "window-metrics-1h")}
    w1.stop()
    shutil.rmtree(w1.workdir / "faust")
    w1 = stack.start_worker("w1b", PARQUET_FLUSH_SECONDS="1")  # a new, empty data dir
    for table, value in before.items():
        wait_for(lambda t=table, v=value: windows(w1, t) == v, 120, f"{table} recovered")

    # a second worker: each owns half the partitions, and either answers for all
    w2 = stack.start_worker("w2", PARQUET_FLUSH_SECONDS="1")

    def split() -> bool:
        mine = [get(f"{w.web_url}/payments/stats/")["assigned"] for w in (w1, w2)]
        return all(any(a.startswith("payments[") for a in m) for m in mine)

    wait_for(split, 120, "the partitions to be split between two workers")
    for table, value in before.items():
        wait_for(lambda t=table, v=value: windows(w1, t) == v and windows(w2, t) == v, 120,
                 f"{table} merged across two workers")
        local = get(f"{w2.web_url}/payments/tables/{table}/windows/?scope=local")["windows"]
        assert local != value, "one worker alone should hold only part of the windows"
