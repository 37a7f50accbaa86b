"""Retention cost at scale: ``python -m benchmarks.retention --rows 1000000``.

Fills a fresh database (migrated to head) with ``--rows`` payments in
``normalized_transactions``, a ``dynamic_metrics`` row each and as many
``aggregate_histograms`` rows, half of them past their retention, server-side
(``generate_series``), then times the retention of every table
(:data:`storage.retention.RETENTION`): rows deleted per second, and how long each
delete batch (one transaction) took on average. Prints progress while filling.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import UTC, datetime

import psycopg2

from devtools.services import ensure_postgres, libpq_dsn
from devtools.stack import REPO_ROOT, run_migrations
from runtime.settings import Settings
from storage.postgres import create_db_engine
from storage.retention import RETENTION, purge_table

NOW = datetime(2026, 11, 22, tzinfo=UTC)
FILL = [
    ("normalized_transactions", """
        INSERT INTO normalized_transactions
        SELECT 'tx' || g, %(now)s - make_interval(days => CASE WHEN g %% 2 = 0 THEN 400 ELSE 1 END),
               'm' || (g %% 1000), 'c' || (g %% 50000), 4500, 'EUR', 'pos', 'card', 'approved',
               NULL, 'DE', 180, NULL, NULL, NULL, 'payments', 0, g, now()
        FROM generate_series(%(lo)s, %(hi)s) g"""),
    ("dynamic_metrics", """
        INSERT INTO dynamic_metrics (transaction_id, metric_type, metric_data, created_at)
        SELECT 'tx' || g, 'metrics', '{"counter": {"transactions": 1}}',
               %(now)s - make_interval(days => CASE WHEN g %% 2 = 0 THEN 400 ELSE 1 END)
        FROM generate_series(%(lo)s, %(hi)s) g"""),
    ("aggregate_histograms", """
        INSERT INTO aggregate_histograms (metric_type, dimension, time_window, window_seconds,
                                          buckets, count, sum)
        SELECT 'm' || g, '', %(now)s - make_interval(
                   days => CASE WHEN g %% 2 = 0 THEN 800 ELSE 1 END, secs => g), 300, '{}', 1, 1
        FROM generate_series(%(lo)s, %(hi)s) g"""),
]


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retention", description=__doc__)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=10_000, help="rows per delete transaction")
    args = p.parse_args()
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), REPO_ROOT / ".run" / "bench-ret" / "pg")
    name = f"payment_monitor_retention_{uuid.uuid4().hex[:6]}"
    url = pg.create_database(name)
    try:
        run_migrations(url)
        conn = psycopg2.connect(libpq_dsn(url))
        conn.autocommit = True
        cur = conn.cursor()
        step = 200_000
        for table, sql in FILL:
            for lo in range(1, args.rows + 1, step):
                hi = min(args.rows, lo + step - 1)
                cur.execute(sql, {"now": NOW, "lo": lo, "hi": hi})
                print(f"  filled {table}: {hi:,} of {args.rows:,} rows", flush=True)
        cur.execute("ANALYZE")
        conn.close()

        engine = create_db_engine(url)
        settings = Settings()
        print(f"retention of {args.rows:,} payments (+ metrics, + histograms), half expired, "
              f"batches of {args.batch:,}:")
        total, started = 0, time.perf_counter()
        for table, (_, setting) in RETENTION.items():
            t0 = time.perf_counter()
            n = purge_table(engine, table, getattr(settings, setting), now=NOW, batch=args.batch)
            secs = time.perf_counter() - t0
            per_batch = secs / max(1, -(-n // args.batch)) * 1000
            print(f"  {table:<26}{n:>10,} rows in {secs:6.1f} s  "
                  f"({n / secs if secs else 0:,.0f} rows/s, {per_batch:.0f} ms per batch)")
            total += n
        secs = time.perf_counter() - started
        print(f"  all tables: {total:,} rows in {secs:.1f} s = {total / secs:,.0f} rows/s")
    finally:
        pg.drop_database(name)
        pg.stop()


if __name__ == "__main__":
    main()
