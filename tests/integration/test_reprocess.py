"""``reprocess`` after a rule change (storage.reprocess): the range's flags become what a
fresh run of the same payments under the new rules gives, reviews of flags that still
hold are kept, a second run changes nothing, and a dry run changes nothing at all."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import psycopg2
import pytest
import yaml

from devtools.services import libpq_dsn
from devtools.stack import FAUST
from pipeline.batches import SinkBatch
from pipeline.config import ActiveConfig
from pipeline.histogram import Histogram
from pipeline.windows import HistogramPartials, WindowCounts, WindowMetrics, WindowRow
from storage.postgres import PostgresSink, create_db_engine
from storage.reprocess import ReprocessError, reprocess
from storage.window_rebuild import WindowPlan
from tests.helpers import CUSTOMER_START as START
from tests.helpers import batch_metrics, changed_compliance_rules, parse, query, shipped_config
from tests.helpers import customer_traffic as traffic

OLD = shipped_config()


NEW = changed_compliance_rules()


def docs_for(seed: int) -> list[dict]:
    """The customer-rule traffic, with countries and risk scores for the per-event rules."""
    rng = random.Random(seed)
    return [{**d, "country": rng.choice(["DE", "FR", "US", "IR"]),
             "risk_score": round(rng.random(), 3)} for d in traffic(seed, n=300)]


def store(url: str, docs: list[dict], active: ActiveConfig, seed: int) -> None:
    """Every payment once, in random batches from four partitions, as workers store them
    under ``active`` (per-event rules and metrics extracted, customer rules judged)."""
    sink = PostgresSink(create_db_engine(url))
    order = docs[:]
    rng = random.Random(seed)
    rng.shuffle(order)
    offsets = [0, 0, 0, 0]
    while order:
        size = rng.randrange(1, 40)
        part, order = order[:size], order[size:]
        p = rng.randrange(4)
        payments = {offsets[p] + i: parse(_raw(d)).transaction for i, d in enumerate(part)}
        metrics = batch_metrics(active.engine, payments)
        sink.write([SinkBatch("payments", p, [], payments, [], [], time.time(), metrics,
                              active.version, customer_rules=active.engine.customer_rules)])
        offsets[p] += size


def _raw(d: dict) -> bytes:
    return json.dumps(d).encode()


def flags(url: str) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in query(url, "SELECT transaction_id, rule FROM compliance_flags")}


def compliance_rows(url: str) -> dict[str, dict]:
    return dict(query(url, "SELECT transaction_id, metric_data FROM dynamic_metrics "
                           "WHERE metric_type = 'compliance'"))


@pytest.mark.parametrize("seed", [4, 5])
def test_reprocess_gives_the_flags_of_a_fresh_run_under_the_new_rules(
        database_url, fresh_database_url, seed):
    docs = docs_for(seed)
    store(database_url, docs, OLD, seed)
    store(fresh_database_url, docs, NEW, seed + 1)  # the fresh run, in another order
    before, fresh = flags(database_url), flags(fresh_database_url)
    assert before != fresh, "the change of rules changes the flags"
    assert {r for _, r in fresh} == {"velocity", "structuring", "large_amount",
                                     "high_risk_country", "high_risk_score"}

    # a reviewed flag that still holds, and one that no longer does
    kept = sorted(before & fresh)[0]
    gone = sorted(before - fresh)[0]
    with psycopg2.connect(libpq_dsn(database_url)) as conn, conn.cursor() as cur:
        for (tx, rule), status in ((kept, "escalated"), (gone, "cleared")):
            cur.execute("UPDATE compliance_flags SET status = %s, reviewed_by = 'ana', "
                        "note = 'seen' WHERE transaction_id = %s AND rule = %s",
                        (status, tx, rule))

    engine = create_db_engine(database_url)
    since, until = START - timedelta(hours=1), START + timedelta(hours=3)
    dry = reprocess(engine, NEW, since, until, dry_run=True)
    assert flags(database_url) == before, "a dry run changes nothing"
    report = reprocess(engine, NEW, since, until)

    assert flags(database_url) == fresh
    assert compliance_rows(database_url) == compliance_rows(fresh_database_url)
    assert report.payments == len(docs)
    assert sum(report.added.values()) == len(fresh - before)
    assert sum(report.removed.values()) == len(before - fresh)
    assert Counter(r for _, r in fresh - before) == +report.added
    assert (dry.added, dry.removed, dry.kept) == (report.added, report.removed, report.kept)
    assert report.removed_reviewed == [(*gone, "cleared")]
    assert report.windows is None, "no window plan: the windows are not touched"
    assert query(database_url, "SELECT status, reviewed_by, note, config_version FROM "
                               "compliance_flags WHERE transaction_id = %s AND rule = %s",
                 kept) == [("escalated", "ana", "seen", NEW.version)]
    metrics = query(database_url, "SELECT count(*), count(DISTINCT transaction_id) FROM "
                                  "dynamic_metrics WHERE metric_type = 'metrics'")
    assert metrics == [(len(docs), len(docs))], "every payment's metric row, once"

    again = reprocess(engine, NEW, since, until)  # idempotent
    assert not +again.added and not +again.removed
    assert flags(database_url) == fresh


def test_only_the_range_is_judged_again(database_url):
    docs = docs_for(6)
    store(database_url, docs, OLD, 6)
    cut = START + timedelta(minutes=45)
    earlier = ("SELECT f.transaction_id, f.rule, f.config_version FROM compliance_flags f "
               "JOIN normalized_transactions p USING (transaction_id) "
               "WHERE p.event_time < %s ORDER BY 1, 2")
    before = query(database_url, earlier, (cut,))
    report = reprocess(create_db_engine(database_url), NEW, cut, START + timedelta(hours=3))
    assert before and query(database_url, earlier, (cut,)) == before
    assert report.payments == sum(1 for d in docs if d["event_time"] >= cut.strftime(
        "%Y-%m-%dT%H:%M:%S"))


def test_slices_of_a_few_payments_give_the_same_flags(database_url, fresh_database_url,
                                                      monkeypatch):
    """A slice ends where its payments reach SLICE_PAYMENTS (here 7, and more when one
    event time holds more): the verdicts do not depend on where the range is cut."""
    docs = docs_for(8)
    for d in docs[:20]:  # twenty payments at one instant: a slice of their own
        d["event_time"] = docs[0]["event_time"]
    store(database_url, docs, OLD, 8)
    store(fresh_database_url, docs, OLD, 9)
    since, until = START - timedelta(hours=1), START + timedelta(hours=3)
    whole = reprocess(create_db_engine(fresh_database_url), NEW, since, until)
    monkeypatch.setattr("storage.reprocess.SLICE_PAYMENTS", 7)
    cuts: list = []
    sliced = reprocess(create_db_engine(database_url), NEW, since, until,
                       progress=lambda a, b, report: cuts.append((a, b)))
    assert flags(database_url) == flags(fresh_database_url)
    assert (sliced.added, sliced.removed, sliced.payments) == (
        whole.added, whole.removed, whole.payments)
    assert len(cuts) > len(docs) // 7 - 3
    assert all(a < b for a, b in cuts) and cuts[0][0] == since and cuts[-1][1] == until
    assert all(b == a2 for (_, b), (a2, _) in zip(cuts, cuts[1:], strict=False))
    with pytest.raises(ReprocessError, match="must be after"):
        reprocess(create_db_engine(database_url), NEW, until, since)


def test_the_command_judges_again_under_the_pushed_rules(broker, database_url, tmp_path):
    """``config push`` lowers the EUR large-amount limit; ``faust -A app reprocess`` then
    flags every EUR payment at or above the new limit, reports it, and a dry run before
    it changed nothing."""
    docs = docs_for(7)
    store(database_url, docs, OLD, 7)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(BROKER_URL=broker.url, APP_ID=f"pm-reprocess-{uuid.uuid4().hex[:6]}",
               DATABASE_URL=database_url)
    lower = yaml.safe_load(Path("config/compliance.yaml").read_text())
    lower["rules"][0]["thresholds_minor"]["EUR"] = 500_000
    (tmp_path / "lower.yaml").write_text(yaml.safe_dump(lower))

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([FAUST, "-A", "app", *args], env={**env, **extra}, cwd=tmp_path,
                              capture_output=True, text=True, timeout=120,
                              stdin=subprocess.DEVNULL, check=False)

    pushed = cli("config", "push", "compliance:rules:v1",
                 COMPLIANCE_CONFIG=str(tmp_path / "lower.yaml"))
    assert pushed.returncode == 0, pushed.stderr
    large = {(d["transaction_id"], "large_amount") for d in docs
             if d["amount_minor"] >= (500_000 if d["currency"] == "EUR" else 1_000_000)}
    before = flags(database_url)
    window = ("--since", "2026-11-22T08:00:00Z", "--until", "2026-11-22T12:00:00Z")

    dry = cli("reprocess", *window, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "flags would change:" in dry.stdout and flags(database_url) == before
    done = cli("reprocess", *window, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert "compliance=" in report["config_version"] and report["payments"] == len(docs)
    # the range's hours hold payments the workers may still count: left to them
    assert report["windows"]["rebuilt"] == {} and len(report["windows"]["unsettled"]) == 2
    assert "2 windows left to the workers, not settled yet" in cli(
        "reprocess", *window, "--dry-run").stdout
    assert report["rules"]["large_amount"]["added"] == len(large - before) > 0
    assert {f for f in flags(database_url) if f[1] == "large_amount"} == large
    assert f"reprocess: {len(docs)}/{len(docs)} payments, up to 2026-11-22T12:00:00+00:00" \
        in done.stderr, "progress on stderr"
    assert "reprocess: windows 4/4, up to 2026-11-22T12:00:00+00:00" in done.stderr

    bad = cli("reprocess", "--since", "2026-11-22T12:00:00Z", "--until", "2026-11-22T08:00Z")
    assert bad.returncode == 2 and bad.stderr.startswith("error: --until"), bad.stderr


def test_windows_that_have_not_settled_are_left_to_the_workers(database_url):
    """A window is rebuilt only once every partition holding its payments has stored one
    dated WINDOW_RETENTION_S plus an hour after its end: until then a worker may write it."""
    docs = docs_for(10)
    store(database_url, docs, OLD, 10)  # 09:00 to 10:30, in partitions 0 to 3
    plan = WindowPlan((300, 3600), 1800)  # settled 1.5 h after its end
    engine = create_db_engine(database_url)
    since, until = START - timedelta(hours=1), START + timedelta(hours=2)
    report = reprocess(engine, OLD, since, until, windows=plan)
    assert report.windows is not None and report.windows.span == (since, until)
    hours = [START, START + timedelta(hours=1)]  # 08:00 holds no payment: nothing to do
    assert report.windows.unsettled == hours and report.windows.rebuilt == {}
    assert query(database_url, "SELECT count(*) FROM payment_window_partials") == [(0,)]

    # a payment at 12:00 in every partition: 09:00-10:00 settles (11:30), 10:00 not yet
    sink = PostgresSink(create_db_engine(database_url))
    for p in range(4):
        doc = {**docs[p], "transaction_id": f"tx-noon-{p}",
               "event_time": "2026-11-22T12:00:00.000Z"}
        tx = parse(_raw(doc)).transaction
        sink.write([SinkBatch("payments", p, [], {10_000: tx}, [], [], time.time(),
                              batch_metrics(OLD.engine, {10_000: tx}), OLD.version)])
    report = reprocess(engine, OLD, since, until, windows=plan)
    assert report.windows.unsettled == hours[1:] and report.windows.rebuilt == {300: 12,
                                                                                3600: 1}
    in_nine = sum(1 for d in docs if d["event_time"].startswith("2026-11-22T09"))
    assert report.windows.brought_in == in_nine, "no worker counted them here: all new"
    assert query(database_url, "SELECT sum(tx_count), min(window_start), max(window_start) "
                               "FROM payment_metrics_5m") == [
        (in_nine, START, START + timedelta(minutes=55))]

    # a worker still holding a rebuilt window (a late payment before its expiry, a replay)
    # writes its old absolute values: only its late_events row is taken
    nine = int(START.timestamp())
    rows = query(database_url, "SELECT channel, source_partition, tx_count, last_offset FROM "
                               "payment_window_partials WHERE window_seconds = 3600 "
                               "ORDER BY 1, 2 LIMIT 1")
    channel, part, count, last = rows[0]
    stale = WindowCounts(count - 1, 0, {"approved": count - 1}, last + 100)
    sink.write([SinkBatch("payments", part, [], {}, [], [WindowRow(3600, nine, channel, part,
                                                                   stale)], time.time())])
    old = WindowMetrics({"amount_minor|currency=EUR": Histogram(OLD.engine.bounds(
        "amount_minor")), "late_events|": Histogram(())}, last + 100)
    old.hists["late_events|"].observe(1)
    partials = HistogramPartials()
    partials.add(3600, nine, part, old)
    sink.write_windows(partials)
    assert query(database_url, "SELECT tx_count FROM payment_window_partials WHERE "
                               "window_seconds = 3600 AND channel = %s AND source_partition "
                               "= %s", (channel, part)) == [(count,)]
    assert query(database_url, "SELECT metric_type, count FROM histogram_partials WHERE "
                               "window_seconds = 3600 AND source_partition = %s AND "
                               "(metric_type, dimension) IN (('amount_minor', 'currency=EUR'), "
                               "('late_events', '')) ORDER BY 1", (part,)) == [
        ("amount_minor", sum(1 for d in docs if d["currency"] == "EUR" and d["event_time"]
                             .startswith("2026-11-22T09") and _partition_of(database_url, d)
                             == part)),
        ("late_events", 1)]
    assert query(database_url, "SELECT count FROM aggregate_histograms WHERE metric_type = "
                               "'late_events' AND window_seconds = 3600") == [(1,)]
    assert query(database_url, "SELECT count(*), min(config_version) FROM rebuilt_windows") \
        == [(len(set(query(database_url, "SELECT window_seconds, window_start, "
                                         "source_partition FROM payment_window_partials"))),
             OLD.version)]


def _partition_of(url: str, doc: dict) -> int:
    return query(url, "SELECT source_partition FROM normalized_transactions WHERE "
                      "transaction_id = %s", (doc["transaction_id"],))[0][0]
