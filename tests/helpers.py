"""What the tests share: independent expectations computed from generated events (no
pipeline code), the shipped configuration, hand-built sink batches, and the end-to-end
drivers (sending, killing, restarting) with the end-state check every run must pass."""

from __future__ import annotations

import asyncio
import bisect
import functools
import json
import random
import subprocess
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pyarrow as pa
import pytest
import yaml
from aiokafka import AIOKafkaConsumer

from devtools.services import libpq_dsn, query  # noqa: F401  # query: the tests call it from here
from devtools.stack import REPO_ROOT, Stack
from models.events import STATUSES, FailedMessage
from pipeline.batches import SinkBatch
from pipeline.config import COMPLIANCE_KEY, ActiveConfig, ConfigVersion, compile_config
from pipeline.parse import ParseResult
from simulator.generator import PaymentGenerator, SimEvent, load_scenario
from storage.config_sources import compile_files

VALID = {"valid"}


def event_ts(payload: dict) -> float:
    t = datetime.strptime(payload["event_time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return t.timestamp()


def too_late(events: list[SimEvent], *, finest: int = 300, grace: float = 120) -> set[int]:
    """Indexes of valid events too late for the windows, ``events`` being one partition's
    messages in offset order: an event is late when its ``finest`` window ended ``grace``
    seconds or more before the newest event time of the valid events before it."""
    late: set[int] = set()
    stream = float("-inf")
    for i, e in enumerate(events):
        if e.kind not in VALID:
            continue
        ts = event_ts(e.payload)
        if ts // finest * finest + finest + grace <= stream:
            late.add(i)
        stream = max(stream, ts)
    return late


def expected_windows(events: list[SimEvent], size: int,
                     late: set[int] = frozenset()) -> dict[tuple[datetime, str], Counter]:
    """Per (window start, channel): counts of payments and of each status, amount sum,
    leaving out the events whose index is in ``late``."""
    out: dict[tuple[datetime, str], Counter] = defaultdict(Counter)
    for i, e in enumerate(events):
        if e.kind not in VALID or i in late:
            continue
        p = e.payload
        assert p is not None
        epoch = int(event_ts(p))
        start = datetime.fromtimestamp(epoch - epoch % size, UTC)
        c = out[(start, p["channel"])]
        c["tx_count"] += 1
        c[p["status"]] += 1
        c["amount_minor_sum"] += p["amount_minor"]
    return dict(out)


CONFIG = Path(__file__).resolve().parents[1] / "config" / "metrics.yaml"


def _bounds() -> dict[str, list[float]]:
    extractors = {e["extractor"]: e for e in yaml.safe_load(CONFIG.read_text())["extractors"]}
    return {"amount_minor": extractors["amount"]["buckets"],
            "processing_ms": extractors["processing_latency"]["buckets"]}


def _label(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else repr(float(bound))


def expected_histograms(counted: list[SimEvent], late: list[SimEvent],
                        size: int) -> dict[tuple, tuple]:
    """``aggregate_histograms`` rows for a few metrics, computed straight from the events:
    (metric, dimension, window start, size) -> (buckets, count, sum, min, max)."""
    bounds = _bounds()
    values: dict[tuple, list[float]] = defaultdict(list)

    def start_of(p: dict) -> datetime:
        epoch = int(event_ts(p))
        return datetime.fromtimestamp(epoch - epoch % size, UTC)

    for e in counted:
        p = e.payload
        start = start_of(p)
        values[("processing_ms", "", start)].append(p["processing_ms"])
        values[("processing_ms", f"channel={p['channel']}", start)].append(p["processing_ms"])
        values[("amount_minor", f"currency={p['currency']}", start)].append(p["amount_minor"])
        values[("transactions", f"channel={p['channel']}", start)].append(1)
        values[("approval", "", start)].append(1 if p["status"] == "approved" else 0)
    for e in late:
        values[("late_events", "", start_of(e.payload))].append(1)
    out = {}
    for (metric, dim, start), vs in values.items():
        b = bounds.get(metric, [])
        counts = [0] * (len(b) + 1)
        for v in vs:
            counts[next((i for i, x in enumerate(b) if v <= x), len(b))] += 1
        labels = [_label(x) for x in b] + ["+Inf"]
        out[(metric, dim, start, size)] = (dict(zip(labels, counts, strict=True)), len(vs),
                                           float(sum(vs)), float(min(vs)), float(max(vs)))
    return out


def execute(url: str, sql: str) -> None:
    """Run one SQL statement against the database at ``url`` and commit."""
    conn = psycopg2.connect(libpq_dsn(url))
    try:
        conn.cursor().execute(sql)
        conn.commit()
    finally:
        conn.close()


@functools.cache
def shipped_config() -> ActiveConfig:
    """The shipped configuration, compiled the way a worker does (files, cross-checks)."""
    return compile_files()


def changed_compliance_rules() -> ActiveConfig:
    """The compliance rules after a push: stricter velocity, looser structuring, a lower
    large-amount limit, one more high-risk country."""
    shipped = shipped_config()
    document = {**shipped.versions[COMPLIANCE_KEY].document}
    rules = []
    for rule in document["rules"]:
        rule = dict(rule)
        if rule["rule"] == "velocity":
            rule.update(max_payments=3, within_seconds=300)
        elif rule["rule"] == "structuring":
            rule.update(min_payments=2, lower_fraction=0.8)
        elif rule["rule"] == "large_amount":
            rule["thresholds_minor"] = {**rule["thresholds_minor"], "EUR": 1_500_000}
        elif rule["rule"] == "high_risk_country":
            rule["countries"] = [*rule["countries"], "DE"]
        rules.append(rule)
    document["rules"] = rules
    return compile_config({**shipped.versions,
                           COMPLIANCE_KEY: ConfigVersion(COMPLIANCE_KEY, document, 2, "topic")})


def parse(raw: bytes | None, received_at: float | datetime | None = None) -> ParseResult:
    """Parse one message with the shipped configuration's validator."""
    return shipped_config().validator.parse(raw, received_at)


VALID_PAYMENT = {
    "schema_version": "1",
    "transaction_id": "tx-1",
    "event_time": "2026-11-22T10:15:30.123Z",
    "merchant_id": "m1",
    "customer_id": "c1",
    "amount_minor": 1234,
    "currency": "EUR",
    "channel": "pos",
    "payment_method": "card",
    "status": "approved",
    "country": "DE",
    "processing_ms": 120,
}


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp: float

    @property
    def tp(self):
        return (self.topic, self.partition)


def read_lake(root: Path | str, storage_options: dict[str, str] | None = None) -> pa.Table:
    """Every row of the lake's Delta table, read by polars (an engine the writer does not
    use): what Synapse, Fabric or Databricks would count."""
    import polars

    return polars.read_delta(str(root), storage_options=storage_options).to_arrow()


def make_batch(first: int, count: int, *, partition: int = 0, invalid: float = 0.1) -> SinkBatch:
    gen = PaymentGenerator(load_scenario(), seed=11, invalid_ratio=invalid,
                           start=datetime(2026, 3, 1, 9, 59, 58, tzinfo=UTC))
    return batch_of(list(gen.events(first + count))[first:], partition, first)


def batch_of(events: list, partition: int, first: int,
             arrival: float | None = None) -> SinkBatch:
    """The sink batch of simulator ``events`` at offsets ``first``...: parsed, failures kept."""
    arrival = time.time() if arrival is None else arrival
    msgs, payments, failed = [], {}, []
    for offset, e in enumerate(events, start=first):
        msgs.append(Msg("payments", partition, offset, e.key, e.value, arrival))
        r = parse(e.value)
        if r.transaction is None:
            failed.append(FailedMessage(e.value, r.category, r.errors, "payments", partition,
                                        offset, datetime.fromtimestamp(arrival, UTC)))
        else:
            payments[offset] = r.transaction
    return SinkBatch("payments", partition, msgs, payments, failed, [], arrival)




async def read_topic(bootstrap: str, topic: str) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records: list = []
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=3000)
            if not batch:
                return records
            for part in batch.values():
                records.extend(part)
    finally:
        await consumer.stop()


def split_late(records: list, valid: list[SimEvent]) -> tuple[list[SimEvent], list[SimEvent]]:
    """The valid events counted in the windows and those too late, judged per partition
    in offset order from the records the broker holds."""
    by_value = {e.value: e for e in valid}
    counted: list[SimEvent] = []
    late: list[SimEvent] = []
    for partition in sorted({r.partition for r in records}):
        seq, seen = [], set()
        for r in sorted((r for r in records if r.partition == partition),
                        key=lambda r: r.offset):
            if r.value in by_value and r.value not in seen:  # later copies are duplicates
                seen.add(r.value)
                seq.append(by_value[r.value])
        gone = too_late(seq)
        counted += [e for i, e in enumerate(seq) if i not in gone]
        late += [e for i, e in enumerate(seq) if i in gone]
    return counted, late


def assert_histograms(url: str, counted: list[SimEvent], late: list[SimEvent]) -> None:
    """aggregate_histograms equal an independent computation, and each hourly window is
    the merge of its 5-minute windows."""
    rows = query(url, "SELECT metric_type, dimension, time_window, window_seconds, buckets, "
                      "count, sum, min, max FROM aggregate_histograms")
    got = {(r[0], r[1], r[2], r[3]): (r[4], r[5], r[6], r[7], r[8]) for r in rows}
    checked = 0
    for size in (300, 3600):
        for key, want in expected_histograms(counted, late, size).items():
            assert got.get(key) == want, f"{key}: {got.get(key)} != {want}"
            checked += 1
    assert checked > 50
    hourly: dict = {}
    for (metric, dim, start, size), (buckets, count, total, lo, hi) in got.items():
        if size != 300:
            continue
        hour = start.replace(minute=0)
        h = hourly.setdefault((metric, dim, hour, 3600), [Counter(), 0, 0.0, [], []])
        h[0].update(buckets)
        h[1] += count
        h[2] += total
        h[3].append(lo)
        h[4].append(hi)
    for key, (buckets, count, total, lows, highs) in hourly.items():
        row = got[key]
        assert {k: v for k, v in row[0].items() if v} == dict(+buckets), key
        assert (row[1], row[3], row[4]) == (count, min(lows), max(highs)), key
        assert abs(row[2] - total) <= 1e-6 * max(1.0, abs(total)), key


def customer_rule_flags(payments: list[dict]) -> list[tuple[str, str]]:
    """``(transaction_id, rule)`` of the accepted ``payments`` (documents) that velocity
    and structuring flag under the shipped configuration, by the semantics of
    docs/metrics.md: per customer, whatever the merchant; within ``(t - W, t]``."""
    rules = {r.kind: r for r in shipped_config().engine.customer_rules}
    by_customer: dict[str, list[tuple[float, str, int, str]]] = defaultdict(list)
    for p in payments:
        by_customer[p["customer_id"]].append((event_ts(p), p["transaction_id"],
                                              p["amount_minor"], p["currency"]))
    out = []
    velocity, structuring = rules.get("velocity"), rules.get("structuring")
    for entries in by_customer.values():
        entries.sort()
        times = [e[0] for e in entries]
        for t, tx_id, amount, currency in entries:
            if velocity is not None:
                # (t - W, t]: bisect on the sorted times (ms precision: exact floats)
                n = bisect.bisect_right(times, t) - bisect.bisect_right(times, t - velocity.within)
                if n > velocity.max_payments:
                    out.append((tx_id, "velocity"))
            if structuring is not None:
                limit = structuring.thresholds.get(currency)

                def band(a: int, c: str, limit=limit) -> bool:
                    return limit is not None and limit * structuring.fraction <= a < limit

                if band(amount, currency):
                    n = sum(1 for u, _, a, c in entries if c == currency and band(a, c)
                            and t - structuring.within < u <= t)
                    if n >= structuring.min_payments:
                        out.append((tx_id, "structuring"))
    return out


def lake_report(root: Path, expected: int) -> str:
    """What is wrong with a lake that should hold ``expected`` rows: the coordinates read
    twice or missing, and the table's commits (a failure then says which appends
    overlap without the workers' logs)."""
    from deltalake import DeltaTable

    table = read_lake(root).select(["partition", "offset"])
    counts = Counter(zip(table["partition"].to_pylist(), table["offset"].to_pylist(),
                         strict=True))
    doubled = {c: n for c, n in counts.items() if n > 1}
    missing: list[tuple[int, int]] = []
    for partition in sorted({p for p, _ in counts}):
        offsets = sorted(o for p, o in counts if p == partition)
        present = set(offsets)
        missing += [(partition, o) for o in range(offsets[0], offsets[-1]) if o not in present]
    history = [(h.get("version"), h.get("operation"), h.get("operationMetrics", {}).get(
        "num_added_rows")) for h in DeltaTable(str(root)).history(20)]
    return (f"lake holds {table.num_rows} rows at {len(counts)} coordinates for {expected} "
            f"events; {len(doubled)} read twice or more (first: {list(doubled)[:8]}); "
            f"{len(missing)} missing inside the partitions' ranges (first: {missing[:8]}); "
            f"last commits: {history}")


def assert_end_state(stack: Stack, events: list[SimEvent]) -> None:
    """Every produced event stored exactly once, and the windows equal an independent count."""
    url = stack.database_url
    valid = [e for e in events if e.kind == "valid"]
    invalid = [e for e in events if e.kind != "valid"]

    tx_ids = [r[0] for r in query(url, "SELECT transaction_id FROM normalized_transactions")]
    assert sorted(tx_ids) == sorted(e.payload["transaction_id"] for e in valid)
    failed = query(url, "SELECT raw_payload, source_partition, source_offset FROM failed_items")
    assert Counter(bytes(r[0]) for r in failed) == Counter(e.value for e in invalid)
    assert len(failed) + len(tx_ids) == len(events)

    lake = read_lake(stack.raw_dir).select(["partition", "offset", "value", "accepted"])
    assert lake.num_rows == len(events), lake_report(stack.raw_dir, len(events))
    coords = set(zip(lake["partition"].to_pylist(), lake["offset"].to_pylist(), strict=True))
    assert len(coords) == len(events), lake_report(stack.raw_dir, len(events))
    assert Counter(lake["value"].to_pylist()) == Counter(e.value for e in events)
    assert lake["accepted"].to_pylist().count(True) == len(valid)

    records = asyncio.run(read_topic(stack.broker.bootstrap, "payments"))
    counted, late = split_late(records, valid)
    for size, sql in (
        (300, "SELECT window_start, channel, tx_count, approved_count, declined_count, "
              "failed_count, pending_count, reversed_count, amount_minor_sum "
              "FROM payment_metrics_5m"),
        (3600, "SELECT window_start, channel, sum(tx_count), sum(approved_count), "
               "sum(declined_count), sum(failed_count), sum(pending_count), "
               "sum(reversed_count), sum(amount_minor_sum) FROM payment_window_partials "
               "WHERE window_seconds = 3600 GROUP BY window_start, channel"),
    ):
        got = {(r[0], r[1]): tuple(int(x) for x in r[2:]) for r in query(url, sql)}
        want = {k: (c["tx_count"], *(c[s] for s in STATUSES), c["amount_minor_sum"])
                for k, c in expected_windows(counted, size).items()}
        assert got == want, f"{size}s windows differ"
    assert_histograms(url, counted, late)

    n_metrics = query(url, "SELECT count(DISTINCT transaction_id), count(*) FROM dynamic_metrics "
                           "WHERE metric_type = 'metrics'")
    assert n_metrics == [(len(valid), len(valid))], "every accepted payment's metrics, once"

    # one case per flagged payment and rule, once: for the rules on the payment alone the
    # verdicts of its metric row; for the rules over a customer's payments, at every
    # merchant, an independent computation of their semantics over the accepted payments
    verdicts = query(url, "SELECT transaction_id, metric_data FROM dynamic_metrics "
                          "WHERE metric_type = 'compliance'")
    flags = query(url, "SELECT transaction_id, rule FROM compliance_flags")
    want = [(tx, name[len("compliance_"):]) for tx, data in verdicts
            for name, value in data.items() if value == 1]
    want += customer_rule_flags([e.payload for e in valid])
    assert sorted(flags) == sorted(want)

    dlq = asyncio.run(read_topic(stack.broker.bootstrap, "payments-dlq"))
    dlq_coords = Counter(r.key for r in dlq)
    want_keys = {f"payments-{p}-{o}".encode() for _, p, o in failed}
    # at-least-once: a replay may resend a DLQ record, always under the same key
    assert set(dlq_coords) == want_keys


def send(stack, events, rate=0.0):
    stack.send(events, rate=rate)


def kill_and_restart(stack: Stack, events: list, kills: int, *, rate: float, seed: int,
                     fresh_datadir: bool = False,
                     gap: tuple[int, int] = (1000, 4000)) -> list[int]:
    """Send ``events`` at ``rate`` while SIGKILLing the worker ``kills`` times; after each
    kill a worker starts again (with a fresh RocksDB directory when ``fresh_datadir``:
    tables rebuilt from the changelogs). Each kill lands once the running worker has
    committed a random ``gap`` (1,000-4,000) offsets more than at the last kill, a
    random moment after a commit. Returns the committed offsets at each kill."""
    rng = random.Random(seed)
    producer = threading.Thread(target=send, args=(stack, events), kwargs={"rate": rate})
    worker = stack.start_worker("w0", PARQUET_FLUSH_SECONDS="1")
    producer.start()
    at_kill: list[int] = []
    for i in range(kills):
        target = (at_kill[-1] if at_kill else 0) + rng.randint(*gap)
        deadline = time.monotonic() + 240
        while stack.committed_and_end()[0] < target:
            assert time.monotonic() < deadline, f"kill {i}: never reached offset {target}"
            assert worker.alive(), f"the worker died by itself; see {worker.log_path}"
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5))
        at_kill.append(stack.committed_and_end()[0])
        worker.kill()
        if stack.broker.kind == "noida-db":  # it never expires the dead member (no JVM here)
            stack.restart_broker()
        name = f"w{i + 1}" if fresh_datadir else "w0"
        worker = stack.start_worker(name, PARQUET_FLUSH_SECONDS="1")
    producer.join()
    stack.wait_until_committed(len(events), timeout=900)
    return at_kill


def send_until_first_commit(stack, events) -> threading.Thread:
    """Send ``events`` at 1,500/s in the background; return once an offset is committed."""
    sender = threading.Thread(target=send, args=(stack, events), kwargs={"rate": 1500})
    sender.start()
    deadline = time.monotonic() + 60
    while stack.committed_and_end()[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return sender


def postgres_restart_mid_stream(tmp_path, events, *, down_s: float, retry_s: int) -> None:
    """A real restart of a server of our own (embedded, so the machine's is untouched):
    fast shutdown mid-stream, down for ``down_s``, started again on the same data; no
    offset is committed meanwhile, and the end state is exact."""
    import uuid

    from devtools.services import start_embedded_postgres
    from devtools.stack import Stack

    pg = start_embedded_postgres(tmp_path / "pg")
    stack = Stack.start(tmp_path / "stack", pg, f"pm_restart_{uuid.uuid4().hex[:6]}")
    try:
        worker = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="1",
                                    DB_RETRY_SECONDS=str(retry_s))
        sender = send_until_first_commit(stack, events)
        pg.stop()  # SIGINT: fast shutdown, every connection is closed by the server
        committed_at_stop = stack.committed_and_end()[0]
        time.sleep(down_s)
        assert worker.alive(), "the worker gave up within its retry budget"
        assert stack.committed_and_end()[0] == committed_at_stop, \
            "offsets were committed while PostgreSQL was down"
        restarted = start_embedded_postgres(tmp_path / "pg")  # same data directory
        assert restarted.server_url == pg.server_url
        pg.embedded_pid = restarted.embedded_pid
        sender.join()
        stack.wait_until_committed(len(events), timeout=600)
        assert worker.alive()
        assert 0 < committed_at_stop < len(events), "the restart did not land mid-stream"
        assert_end_state(stack, events)
    finally:
        stack.stop(drop_database=True)
        pg.stop()


# -- the dashboards and alert rules in deploy/ -----------------------------------------------

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
ALERT_RULES = DEPLOY / "prometheus" / "alerts.yaml"
GRAFANA_DASHBOARD = DEPLOY / "grafana" / "payment-monitor.json"


def promql_names(expr: str) -> set[str]:
    """The metric names an expression selects, from its syntax tree (promql-parser)."""
    import promql_parser

    names: set[str] = set()

    def walk(node: object) -> None:
        if type(node).__name__ == "VectorSelector":
            names.add(node.name)  # type: ignore[attr-defined]
        for attr in ("lhs", "rhs", "expr", "vector_selector", "param"):
            child = getattr(node, attr, None)
            if child is not None and not isinstance(child, str | int | float):
                walk(child)
        for arg in getattr(node, "args", None) or ():
            walk(arg)

    walk(promql_parser.parse(expr))
    return names


def alert_rules() -> list[dict]:
    return [rule for group in yaml.safe_load(ALERT_RULES.read_text())["groups"]
            for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    panels = json.loads(GRAFANA_DASHBOARD.read_text())["panels"]
    return [t["expr"].replace("$__rate_interval", "5m") for p in panels
            for t in p.get("targets", ()) if "expr" in t]


# The deployment checkers that `make tools` builds or installs (tests/deploy).
TOOLS = REPO_ROOT / ".tools"
CHECKOV = TOOLS / "checkov" / "bin" / "checkov"


def tool(path: Path) -> str:
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make install` (or `make tools`)")
    return str(path)


def checkov(directory: Path, framework: str, home: Path) -> dict:
    """checkov's JSON report for ``directory`` (offline: no platform, no download);
    ``home`` takes its cache."""
    out = subprocess.run(
        [tool(CHECKOV), "-d", str(directory), "--framework", framework, "--skip-download",
         "--compact", "-o", "json"],
        capture_output=True, text=True, timeout=300, check=False,
        env={"PATH": "/usr/bin:/bin", "BC_SKIP_MAPPING": "TRUE", "HOME": str(home)})
    if not out.stdout.strip():
        pytest.fail(f"checkov printed no report:\n{out.stderr[-3000:]}")
    report = json.loads(out.stdout)
    return report[0] if isinstance(report, list) else report


def assert_checkov_clean(directory: Path, framework: str, home: Path, *,
                         at_least: int) -> None:
    """checkov finds nothing, passes at least ``at_least`` checks, and every skip has its
    reason written beside it."""
    report = checkov(directory, framework, home)
    failed = report["results"]["failed_checks"]
    assert not failed, [(c["check_id"], c["resource"]) for c in failed]
    assert report["summary"]["passed"] > at_least
    for check in report["results"]["skipped_checks"]:
        reason = check["check_result"].get("suppress_comment") or ""
        assert len(reason) > 20, f"{check['check_id']} skipped without a reason: {reason!r}"


# -- the rules over a customer's payments: traffic with bursts at many merchants --------

CUSTOMER_START = datetime(2026, 11, 22, 9, 0, tzinfo=UTC)


def customer_payment(i: int, customer: str, seconds: float, amount: int = 4_500,
                     currency: str = "EUR", merchant: str = "m1") -> dict:
    when = CUSTOMER_START + timedelta(seconds=seconds)
    return {**VALID_PAYMENT, "transaction_id": f"tx-c-{i}", "customer_id": customer,
            "merchant_id": merchant, "amount_minor": amount, "currency": currency,
            "event_time": when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"}


def customer_traffic(seed: int, n: int = 400) -> list[dict]:
    """Eight customers at twelve merchants over 90 minutes, in bursts, a fifth of the
    amounts just under the EUR threshold."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        seconds = rng.choice([rng.uniform(0, 5400), rng.gauss(1800, 200), rng.gauss(4000, 90)])
        docs.append(customer_payment(i, f"c{rng.randrange(8)}", max(0.0, seconds),
                        amount=rng.randrange(900_000, 1_000_000) if rng.random() < 0.2
                        else rng.randrange(100, 2_000_000),
                        currency=rng.choice(["EUR", "EUR", "USD"]),
                        merchant=f"m{rng.randrange(12):02d}"))
    return docs


def batch_metrics(engine: Any, payments: dict[int, Any]) -> Any:
    """The metric columns of ``payments`` (offset -> payment), as the ingest handler
    extracts them (:meth:`pipeline.metrics.MetricEngine.extract_batch`)."""
    from pipeline.columns import PaymentColumns

    return engine.extract_batch(PaymentColumns(payments, payments.values()))


class RecordingSink:
    """Stands in for SinkService: keeps what the ingest handler hands over."""

    def __init__(self) -> None:
        self.batches: list = []
        self.committed_offsets: dict[int, int] = {}  # nothing committed in these tests

    async def put(self, batch) -> None:
        self.batches.append(batch)

    def epoch(self, partition: int) -> int:
        return 0  # never revoked here


@dataclass
class IngestRig:
    """The ingest handler on a memory-store app, and what it counts into."""

    app: Any
    handler: Any  # the ``payments`` batch handler: await handler(tp, messages)
    state: Any  # tables.payments.WindowState
    seen: Any  # tables.seen.SeenIds
    stats: Any  # agents.ingest.IngestStats


def ingest_rig(tmp: Path, sink: Any, *, partitions: int = 8, fold_events: int = 1,
               claims: Any = None, synced: bool = False,
               sent: list | None = None) -> IngestRig:
    """The ingest handler without a broker, handing its batches to ``sink``: dead-letter
    records go to ``sent`` (dropped without it), ``claims`` stands in for PostgreSQL's,
    ``synced`` skips the first sync of the configuration (no config topic here)."""
    from agents.config import ConfigSync
    from agents.ingest import register_ingest
    from pipeline.config import ConfigManager
    from runtime.faust_app import create_app
    from runtime.settings import Settings
    from runtime.telemetry import Telemetry
    from runtime.topics import declare_topics
    from storage.config_sources import FileSource
    from tables.payments import WindowState, declare_tables
    from tables.seen import SeenIds, declare_seen_table

    app = create_app(Settings(store_url="memory://", app_datadir=str(tmp),
                              broker_url="kafka://127.0.0.1:1"))
    payments, dlq = declare_topics(app)
    dlq.send_soon = (lambda **kw: None) if sent is None else (lambda **kw: sent.append(kw))
    config = ConfigManager(FileSource())
    config.load_all_configuration()
    state = WindowState(app, declare_tables(app, partitions), config.bounds, grace=120,
                        source_topic="payments", fold_events=fold_events)
    seen = SeenIds(app, declare_seen_table(app, partitions), expiry=3600)
    sync = ConfigSync(config, {})
    sync.synced = synced
    stats = register_ingest(app, payments, dlq, state, seen, sink, config, sync,
                            Telemetry(), claims=claims)
    return IngestRig(app, app.batch_handlers["payments"], state, seen, stats)
