"""``make demo``: the whole pipeline on embedded defaults, then a readable summary.

Starts a broker and a PostgreSQL (the machine's if ``DATABASE_URL`` answers,
else an embedded one), runs the migrations, starts ``faust -A app worker``,
runs the simulator, waits until every event is committed and prints a summary.
In a terminal it then keeps the worker and its dashboard up until Enter or Ctrl-C;
without one (CI), or with ``--no-wait``, it stops everything it started at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
from tqdm import tqdm

from devtools.services import ServiceError, ensure_postgres, libpq_dsn
from devtools.stack import REPO_ROOT, Stack
from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import ensure_topic, produce
from storage.delta import RawTable

TABLES = ("normalized_transactions", "failed_items", "payment_metrics_5m",
          "payment_window_partials", "dynamic_metrics", "aggregate_histograms",
          "compliance_flags")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.demo", description=__doc__)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--rate", type=float, default=0.0, help="events/s, 0 = as fast as possible")
    p.add_argument("--invalid-ratio", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--workdir", default=str(REPO_ROOT / ".run" / "demo"))
    p.add_argument("--no-wait", dest="wait", action="store_false",
                   help="stop at once after the summary, even in a terminal")
    args = p.parse_args(argv)

    workdir = Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    step = _Steps()
    step("PostgreSQL")
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), workdir / "pg")
    step.done("embedded, started here" if pg.embedded_pid else "the machine's server")
    stack = None
    try:
        step("broker, database, migrations")
        stack = Stack.start(workdir, pg, "payment_monitor_demo")
        step.done(f"{stack.broker.name} at {stack.broker.url}, alembic upgrade head")
        step("worker (faust -A app worker)")
        worker = stack.start_worker()
        step.done(f"web UI {worker.web_url}")

        step(f"simulator: {args.count:,} events, seed {args.seed}, "
             f"{args.invalid_ratio:.0%} invalid")
        print()
        gen = PaymentGenerator(load_scenario(), seed=args.seed, invalid_ratio=args.invalid_ratio)
        asyncio.run(ensure_topic(stack.broker.bootstrap, "payments", stack.partitions))
        summary = asyncio.run(produce(gen.events(args.count), broker=stack.broker.bootstrap,
                                      topic="payments", total=args.count, rate=args.rate))
        for line in summary.lines():
            print("  " + line)

        print("waiting until the worker has stored and committed every event")
        bar = tqdm(total=summary.produced, unit="ev", mininterval=0.5)
        stack.wait_until_committed(summary.produced, timeout=600,
                                   progress=lambda n: bar.update(n - bar.n))
        bar.close()
        stats = worker.stats()
        print(_summary(stack, summary.produced, stats, worker.web_url))
        if args.wait and sys.stdin.isatty() and not os.environ.get("CI"):
            _stay_live(worker.web_url)
        return 0
    except (ServiceError, OSError, psycopg2.Error) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            stack.stop()
        pg.stop()
        print("stopped the worker, the broker" + (" and PostgreSQL" if pg.embedded_pid else ""))


def _stay_live(web_url: str) -> None:
    """In a terminal: keep the worker and its dashboard up until Enter or Ctrl-C."""
    print(f"\nthe worker is still running: open {web_url}/payments/dashboard/ "
          f"(metrics: {web_url}/metrics, probes: {web_url}/healthz {web_url}/readyz)")
    print("press Enter or Ctrl-C to stop everything ... ", end="", flush=True)
    try:
        input()
    except (KeyboardInterrupt, EOFError):
        print()


class _Steps:
    def __init__(self) -> None:
        self.t0 = 0.0

    def __call__(self, what: str) -> None:
        self.t0 = time.monotonic()
        print(f"- {what} ...", end="", flush=True)

    def done(self, note: str) -> None:
        print(f" {note} ({time.monotonic() - self.t0:.1f} s)")


def _summary(stack: Stack, produced: int, stats: dict, web_url: str) -> str:

    conn = psycopg2.connect(libpq_dsn(stack.database_url))
    try:
        cur = conn.cursor()
        rows = {}
        for table in TABLES:
            cur.execute(f"SELECT count(*) FROM {table}")  # names are constants above
            rows[table] = cur.fetchone()[0]
        cur.execute("""
            SELECT window_start, channel, tx_count, approved_count, declined_count,
                   failed_count, amount_minor_sum
            FROM payment_metrics_5m
            WHERE window_start = (SELECT max(window_start) FROM payment_metrics_5m)
            ORDER BY channel""")
        five = cur.fetchall()
        cur.execute("""
            SELECT window_start, channel, sum(tx_count), sum(approved_count),
                   sum(declined_count), sum(failed_count), sum(amount_minor_sum)
            FROM payment_window_partials
            WHERE window_seconds = 3600
              AND window_start = (SELECT max(window_start) FROM payment_window_partials
                                  WHERE window_seconds = 3600)
            GROUP BY window_start, channel ORDER BY channel""")
        hour = cur.fetchall()
        cur.execute("""
            SELECT dimension, count, p50, p95, p99 FROM aggregate_histograms
            WHERE metric_type = 'processing_ms' AND window_seconds = 300
              AND dimension LIKE 'channel=%%'
              AND time_window = (SELECT max(time_window) FROM aggregate_histograms
                                 WHERE window_seconds = 300)
            ORDER BY dimension""")
        latency = cur.fetchall()
        cur.execute("""
            SELECT metric_type, sum(sum)::bigint FROM aggregate_histograms
            WHERE window_seconds = 3600 AND dimension = ''
              AND (metric_type LIKE 'compliance_%%' OR metric_type = 'late_events')
            GROUP BY metric_type ORDER BY metric_type""")
        flags = cur.fetchall()
        cur.execute("""
            SELECT rule, count(*), count(*) FILTER (WHERE status = 'open')
            FROM compliance_flags GROUP BY rule ORDER BY rule""")
        by_rule = cur.fetchall()
        cur.execute("""
            SELECT customer_id, count(*), count(DISTINCT merchant_id),
                   string_agg(DISTINCT rule, ', ' ORDER BY rule)
            FROM compliance_flags GROUP BY customer_id
            ORDER BY count(*) DESC, customer_id LIMIT 3""")
        top = cur.fetchall()
        cur.execute("""
            SELECT config_version, count(*) FROM dynamic_metrics
            WHERE metric_type = 'metrics' GROUP BY config_version ORDER BY 1""")
        versions = cur.fetchall()
    finally:
        conn.close()

    lake = RawTable(str(stack.raw_dir)).open()
    files = lake.file_uris() if lake is not None else []
    lake_rows = lake.to_pyarrow_dataset().count_rows() if lake is not None else 0
    ingest = stats["ingest"]
    accepted, failed = rows["normalized_transactions"], rows["failed_items"]
    verdict = "OK" if accepted + failed == produced and lake_rows == produced else "MISMATCH"
    out = ["", "=" * 72, "Payment monitor demo: summary", "=" * 72,
           f"broker               {stack.broker.name}",
           f"events produced      {produced:>12,}",
           f"accepted             {accepted:>12,}",
           f"failed (DLQ)         {failed:>12,}",
           f"accepted + failed    {accepted + failed:>12,}   {verdict}: every event stored once",
           "failed by category   " + (", ".join(
               f"{k} {v:,}" for k, v in sorted(ingest.get("failed_by_category", {}).items()))
               or "-"),
           f"worker throughput    {ingest['events_per_second'] or 0:>12,.0f} events/s "
           f"(first to last batch)",
           "", "rows per PostgreSQL table:"]
    out += [f"  {t:<26}{n:>12,}" for t, n in rows.items()]
    out += ["", f"Delta lake ({stack.raw_dir}):",
            f"  version {lake.version() if lake is not None else '-'}, "
            f"files {len(files):,}, rows {lake_rows:,}"]
    for title, data in (("current 5-minute window", five), ("current hourly window", hour)):
        if not data:
            continue
        start = data[0][0].astimezone(UTC)
        out += ["", f"{title} (event time {start:%Y-%m-%d %H:%M} UTC):",
                f"  {'channel':<11}{'payments':>10}{'approved':>10}{'declined':>10}"
                f"{'failed':>8}{'approval':>10}{'amount_minor':>16}"]
        for _, channel, n, ok, dec, fail, amount in data:
            rate = f"{ok / n:.1%}" if n else "-"
            out.append(f"  {channel:<11}{n:>10,}{ok:>10,}{dec:>10,}{fail:>8,}{rate:>10}"
                       f"{int(amount):>16,}")
    if latency:
        out += ["", "processing latency, current 5-minute window (ms, from the buckets):",
                f"  {'channel':<11}{'payments':>10}{'p50':>8}{'p95':>8}{'p99':>8}"]
        out += [f"  {dim.split('=', 1)[1]:<11}{n:>10,}{p50:>8.0f}{p95:>8.0f}{p99:>8.0f}"
                for dim, n, p50, p95, p99 in latency]
    if flags:
        out += ["", "compliance flags in the hourly windows (late events, left out of the "
                    "windows, counted apart):"]
        out += [f"  {name:<32}{n:>10,}" for name, n in flags]
    if by_rule:
        out += ["", "compliance flags per rule (cases in compliance_flags):",
                f"  {'rule':<22}{'flags':>10}{'open':>10}"]
        out += [f"  {rule:<22}{n:>10,}{n_open:>10,}" for rule, n, n_open in by_rule]
        out += ["the three most-flagged customers (faust -A app customers show ID):"]
        out += [f"  {customer:<14}{n:>6,} flags at {m:,} merchants: {rules}"
                for customer, n, m, rules in top]
    if versions:
        out += ["", "configuration versions the payments ran under (docs/configuration.md):"]
        out += [f"  {v:<58}{n:>10,}" for v, n in versions]
    out += ["", f"web UI: {web_url}/payments/dashboard/  "
            f"{web_url}/payments/stats/",
            f"logs and data: {stack.workdir}", "=" * 72,
            f"finished {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC"]
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
