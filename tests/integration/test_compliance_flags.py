"""compliance_flags: one row per flagged payment and rule, written once with its
evidence, never reset by a replay; listed, paged, filtered and reviewed by the store, the
CLI and (tests/e2e) the web view."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pyarrow.parquet as pq
import pytest

from devtools.stack import FAUST
from pipeline.batches import SinkBatch
from storage.flags import ComplianceFlags, FlagError, FlagFilter, FlagNotFound
from storage.postgres import PostgresSink, create_db_engine
from tests.helpers import VALID_PAYMENT, Msg, batch_metrics, parse, query, shipped_config

START = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def payment(offset: int, customer: str, seconds: float, **fields) -> dict:
    when = START + timedelta(seconds=seconds)
    return {**VALID_PAYMENT, "transaction_id": f"tx-flag-{offset}", "customer_id": customer,
            "event_time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z",
            **fields}


# offsets 0-6: seven payments of one customer in 60 s (velocity: more than 5 in 600 s flags
# the 6th and 7th); 7: a large amount; 8: a high-risk country; 9-11: three amounts just
# under the EUR threshold within the hour (structuring flags the third)
DOCS = ([payment(i, "c-velo", 10 * i) for i in range(7)]
        + [payment(7, "c-large", 100, amount_minor=2_000_000),
           payment(8, "c-country", 110, country="IR")]
        + [payment(9 + i, "c-struct", 600 * i, amount_minor=950_000) for i in range(3)])
WANT = {("tx-flag-5", "velocity"), ("tx-flag-6", "velocity"), ("tx-flag-7", "large_amount"),
        ("tx-flag-8", "high_risk_country"), ("tx-flag-11", "structuring")}


def flagged_batch(partition: int = 2) -> SinkBatch:
    engine = shipped_config().engine
    msgs, payments = [], {}
    for offset, doc in enumerate(DOCS):
        raw = json.dumps(doc).encode()
        msgs.append(Msg("payments", partition, offset, doc["merchant_id"].encode(), raw, 0.0))
        tx = parse(raw).transaction
        assert tx is not None, doc
        payments[offset] = tx
    metrics = batch_metrics(engine, payments)
    return SinkBatch("payments", partition, msgs, payments, [], [], time.time(), metrics,
                     "schema=v1;metrics=v1;compliance=v1", customer_rules=engine.customer_rules)


@pytest.fixture
def stored(database_url):
    engine = create_db_engine(database_url)
    sink = PostgresSink(engine)
    written = sink.write([flagged_batch()])
    return written, sink, ComplianceFlags(engine), database_url


def test_each_flag_is_stored_once_with_its_evidence(stored):
    written, sink, _, url = stored
    assert written["compliance_flags"] == len(WANT)
    rows = query(url, "SELECT transaction_id, rule, customer_id, amount_minor, currency, "
                      "config_version, evidence, status FROM compliance_flags")
    assert {(r[0], r[1]) for r in rows} == WANT
    by_key = {(r[0], r[1]): r for r in rows}
    assert {r[7] for r in rows} == {"open"}
    assert by_key[("tx-flag-7", "large_amount")][6] == {
        "amount_minor": 2_000_000, "currency": "EUR", "threshold_minor": 1_000_000}
    assert by_key[("tx-flag-8", "high_risk_country")][6] == {"country": "IR"}
    velocity = by_key[("tx-flag-6", "velocity")][6]
    assert (velocity["counted"], velocity["complete"], velocity["max_payments"]) == (7, True, 5)
    assert [e["transaction_id"] for e in velocity["payments"]] == \
        [f"tx-flag-{i}" for i in range(7)]
    structuring = by_key[("tx-flag-11", "structuring")][6]
    assert (structuring["counted"], structuring["complete"]) == (3, True)
    assert structuring["threshold_minor"] == 1_000_000
    assert [e["transaction_id"] for e in structuring["payments"]] == \
        ["tx-flag-9", "tx-flag-10", "tx-flag-11"]
    assert {r[5] for r in rows} == {"schema=v1;metrics=v1;compliance=v1"}
    # the rules on the payment alone: the same verdicts as its compliance metric row
    metric_rows = query(url, "SELECT transaction_id, metric_data FROM dynamic_metrics "
                             "WHERE metric_type = 'compliance'")
    assert {(tx, rule[len("compliance_"):]) for tx, data in metric_rows
            for rule, value in data.items() if value == 1} == \
        {(tx, rule) for tx, rule in WANT if rule not in ("velocity", "structuring")}
    assert sink.compliance_flags() == {f"compliance_{r}": n for r, n in
                                       {"velocity": 2, "large_amount": 1,
                                        "high_risk_country": 1, "structuring": 1}.items()}


def test_a_replay_neither_duplicates_a_flag_nor_resets_its_review(stored):
    _, sink, flags, url = stored
    reviewed = flags.review("tx-flag-6", "velocity", "cleared", "a family's shared card", "ana")
    assert (reviewed["status"], reviewed["reviewed_by"], reviewed["note"]) == \
        ("cleared", "ana", "a family's shared card")
    again = sink.write([flagged_batch()])  # a replay after a crash or a takeover
    assert again["compliance_flags"] == 0
    rows = query(url, "SELECT transaction_id, rule, status, reviewed_by, note "
                      "FROM compliance_flags ORDER BY transaction_id, rule")
    assert len(rows) == len(WANT)
    assert ("tx-flag-6", "velocity", "cleared", "ana", "a family's shared card") in rows


def test_pages_filters_and_counts(stored):
    _, _, flags, _ = stored
    seen, after = [], None
    while True:
        rows, after = flags.page(FlagFilter(), limit=2, after=after)
        seen += [(r["transaction_id"], r["rule"]) for r in rows]
        if after is None:
            break
    assert len(seen) == len(WANT) and set(seen) == WANT  # every flag once, across pages
    times = [r["event_time"] for r in flags.select(FlagFilter(), chunk=2)]
    assert times == sorted(times, reverse=True)  # newest event first
    assert flags.count(FlagFilter(rule="velocity")) == 2
    assert [r["transaction_id"] for r in flags.select(FlagFilter(customer="c-struct"))] == \
        ["tx-flag-11"]
    assert flags.count(FlagFilter(since=START + timedelta(seconds=100),
                                  until=START + timedelta(seconds=111))) == 2  # 7 and 8
    flags.review("tx-flag-7", "large_amount", "escalated", "reported", "bo")
    assert flags.counts(FlagFilter())["large_amount"] == {"escalated": 1}
    assert flags.count(FlagFilter(status="open")) == len(WANT) - 1
    assert flags.count(FlagFilter(rule="x' OR '1'='1")) == 0  # a value, never SQL


def test_a_review_must_name_a_flag_a_verdict_and_a_reason(stored):
    _, _, flags, _ = stored
    with pytest.raises(FlagNotFound, match="no 'velocity' flag on payment 'tx-flag-7'"):
        flags.review("tx-flag-7", "velocity", "cleared", "n/a", "ana")
    with pytest.raises(FlagError, match="cleared or escalated"):
        flags.review("tx-flag-6", "velocity", "open", "n/a", "ana")
    with pytest.raises(FlagError, match="needs a note"):
        flags.review("tx-flag-6", "velocity", "cleared", "  ", "ana")
    with pytest.raises(FlagError, match="not a page cursor"):
        flags.page(FlagFilter(), after="garbage")
    with pytest.raises(FlagError, match="unknown status"):
        FlagFilter(status="closed")


def _cli(url: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "APP_DATADIR": str(tmp_path / "data"), "DATABASE_URL": url,
           "RAW_EVENTS_URL": str(tmp_path / "raw")}
    return subprocess.run([FAUST, "-A", "app", "flags", *args], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_cli_lists_shows_reviews_and_exports(stored, tmp_path):
    _, _, _, url = stored
    listed = _cli(url, tmp_path, "list", "--rule", "velocity", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [json.loads(line)["transaction_id"] for line in listed.stdout.splitlines()] == \
        ["tx-flag-6", "tx-flag-5"]
    assert "2 shown of 2 matching" in listed.stderr

    reviewed = _cli(url, tmp_path, "review", "tx-flag-5", "--rule", "velocity", "--status",
                    "escalated", "--note", "burst at one till", "--by", "ana")
    assert reviewed.returncode == 0, reviewed.stderr
    assert "tx-flag-5 velocity: escalated by ana" in reviewed.stdout

    shown = _cli(url, tmp_path, "show", "tx-flag-5", "--json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["payment"]["customer_id"] == "c-velo"
    assert [(f["rule"], f["status"], f["note"]) for f in body["flags"]] == \
        [("velocity", "escalated", "burst at one till")]
    assert body["flags"][0]["evidence"]["counted"] == 6
    assert body["raw_event"] is None  # nothing in this test's lake

    for fmt in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"flags.{fmt}"
        done = _cli(url, tmp_path, "export", "--format", fmt, "--output", str(out))
        assert done.returncode == 0, done.stderr
        assert f"exported {len(WANT)} flags to {out}" in done.stderr
        if fmt == "csv":
            rows = list(csv.DictReader(out.open()))
        elif fmt == "jsonl":
            rows = [json.loads(line) for line in out.read_text().splitlines()]
        else:
            rows = pq.read_table(out).to_pylist()
        assert {(r["transaction_id"], r["rule"]) for r in rows} == WANT, fmt
        assert {json.loads(r["evidence"])["counted"] if fmt != "jsonl" else r["evidence"]["counted"]
                for r in rows if r["rule"] == "structuring"} == {3}

    for args, words in ((["review", "tx-flag-5", "--rule", "velocity"],
                         "review needs --rule, --status and --note"),
                        (["show"], "show needs a TXID"),
                        (["show", "tx-nope"], "no stored payment 'tx-nope'"),
                        (["review", "tx-nope", "--rule", "velocity", "--status", "cleared",
                          "--note", "x"], "no 'velocity' flag on payment 'tx-nope'"),
                        (["export", "--format", "parquet"], "parquet needs --output FILE")):
        done = _cli(url, tmp_path, *args)
        assert done.returncode == 2 and words in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_a_customer_and_a_payment_investigated(stored, tmp_path, broker):
    """customers show: the customer's payments at every merchant, flags, and the largest
    window per rule over time; payments show: the row, flags, re-sends and raw event."""
    from models.events import ErrorCategory, FailedMessage, ValidationError
    from storage.parquet import RawEventWriter

    _, sink, _, url = stored
    batch = flagged_batch()
    lake = RawEventWriter(str(tmp_path / "raw"))
    lake.append(batch)
    lake.flush(batch.topic, batch.partition)
    resend = FailedMessage(json.dumps(DOCS[6]).encode(), ErrorCategory.DUPLICATE,
                           (ValidationError("transaction_id", "unique", "already accepted",
                                            "'tx-flag-6'"),),
                           "payments", 3, 40, START, key=b"m9", transaction_id="tx-flag-6")
    sink.write([SinkBatch("payments", 3, [Msg("payments", 3, 40, b"m9", resend.raw, 0.0)],
                          {}, [resend], [], time.time())])
    env = {"BROKER_URL": broker.url, "APP_ID": f"flags-{time.time_ns()}"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([FAUST, "-A", "app", *args],
                              env={**os.environ, "APP_DATADIR": str(tmp_path / "data"),
                                   "DATABASE_URL": url, "RAW_EVENTS_URL": str(tmp_path / "raw"),
                                   **env}, cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, check=False)

    shown = cli("customers", "show", "c-velo", "--since", "2026-11-22", "--until",
                "2026-11-23", "--json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert [p["transaction_id"] for p in body["payments"]] == [f"tx-flag-{i}" for i in range(7)]
    assert [p["flags"] for p in body["payments"]] == [[]] * 5 + [["velocity"]] * 2
    assert body["rules"]["velocity"]["largest_window"] == 7
    assert body["rules"]["velocity"]["flags"] == {"open": 2}
    assert body["rules"]["structuring"] == {
        "flags": {}, "within_seconds": 3600, "largest_window": 0,
        "limit": "at least 3 just under the threshold"}
    text = cli("customers", "show", "c-struct", "--since", "2026-11-22", "--until", "2026-11-23")
    assert text.returncode == 0, text.stderr
    assert "customer c-struct: 3 payments at 1 merchants" in text.stdout
    assert "structuring: 1 open; at most 3 payments within 3600 s" in text.stdout

    shown = cli("payments", "show", "tx-flag-6", "--json")
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["payment"]["customer_id"] == "c-velo"
    assert [f["rule"] for f in body["flags"]] == ["velocity"]
    assert [(r["source_partition"], r["source_offset"]) for r in body["resends"]] == [(3, 40)]
    assert body["raw_event"]["offset"] == 6 and json.loads(body["raw_event"]["value"]) == DOCS[6]
    missing = cli("payments", "show", "tx-none")
    assert missing.returncode == 2 and "no stored payment 'tx-none'" in missing.stderr
    bad = cli("customers", "show", "c-velo", "--since", "yesterday")
    assert bad.returncode == 2 and "not a time" in bad.stderr
