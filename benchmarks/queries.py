"""Data access layer on 10 million payments: ``python -m benchmarks.queries``.

Fills a fresh database (migrated to head) with ``--rows`` payments spread over
``--days`` days of event time (1,000 merchants, 5 channels, 5 statuses, 4 currencies),
a ``metrics`` row for each, a ``compliance`` row and a ``compliance_flags`` row for 1 %,
a duplicate in ``failed_items`` for 1 %, server-side
(``generate_series``, with progress), runs ANALYZE, then times each query of
:class:`storage.queries.PaymentQueries` (best of ``--repeat`` runs, cold first run
shown too). Targets (seed WO-49): transactional queries under 5 s, aggregates under 30 s.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2

from devtools.services import ensure_postgres, libpq_dsn
from devtools.stack import REPO_ROOT, run_migrations
from storage.flags import ComplianceFlags, FlagFilter
from storage.postgres import create_db_engine
from storage.queries import PaymentQueries, TxFilter

END = datetime(2026, 11, 22, tzinfo=UTC)
CHANNELS = "ARRAY['ecommerce','pos','mobile','moto','recurring']"
STATUSES = "ARRAY['approved','approved','approved','declined','failed','pending','reversed']"
CURRENCIES = "ARRAY['EUR','USD','GBP','JPY']"
RULES = ("ARRAY['large_amount','high_risk_country','velocity','structuring',"
         "'high_risk_score']")
FILL = [
    ("normalized_transactions", f"""
        INSERT INTO normalized_transactions
        SELECT 'tx' || g, %(end)s - make_interval(secs => (g * %(spacing)s)::double precision),
               'm' || lpad((g %% 1000)::text, 4, '0'), 'c' || (g %% 200000),
               (g::bigint * 7919) %% 2000000, ({CURRENCIES})[1 + g %% 4], ({CHANNELS})[1 + g %% 5],
               'card', ({STATUSES})[1 + (g / 5) %% 7], NULL, 'DE', 50 + g %% 900, NULL,
               NULL, NULL, 'payments', (g %% 4)::int, g / 4, now()
        FROM generate_series(%(lo)s, %(hi)s) g"""),
    ("dynamic_metrics", """
        INSERT INTO dynamic_metrics (transaction_id, metric_type, metric_data, config_version)
        SELECT 'tx' || g, 'metrics', '{"counter": {"transactions_approved": 1}}', 'bench'
        FROM generate_series(%(lo)s, %(hi)s) g"""),
    ("dynamic_metrics", """
        INSERT INTO dynamic_metrics (transaction_id, metric_type, metric_data, config_version)
        SELECT 'tx' || g, 'compliance', '{"compliance_large_amount": 1}', 'bench'
        FROM generate_series(%(lo)s, %(hi)s) g WHERE g %% 100 = 0"""),
    ("compliance_flags", f"""
        INSERT INTO compliance_flags (transaction_id, rule, customer_id, merchant_id,
                                      event_time, amount_minor, currency, config_version,
                                      evidence)
        SELECT 'tx' || g, ({RULES})[1 + (g / 100) %% 5], 'c' || (g %% 200000),
               'm' || lpad((g %% 1000)::text, 4, '0'),
               %(end)s - make_interval(secs => (g * %(spacing)s)::double precision),
               (g::bigint * 7919) %% 2000000, ({CURRENCIES})[1 + g %% 4], 'bench', '{{}}'
        FROM generate_series(%(lo)s, %(hi)s) g WHERE g %% 100 = 0"""),
    ("failed_items", """
        INSERT INTO failed_items (raw_payload, error_category, error_message, source_topic,
                                  source_partition, source_offset, transaction_id)
        SELECT convert_to('{}', 'UTF8'), 'duplicate', 'a re-send of tx' || g, 'payments',
               (g %% 4)::int, %(rows)s + g, 'tx' || g
        FROM generate_series(%(lo)s, %(hi)s) g WHERE g %% 100 = 0"""),
]


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(first run s, best run s, result)."""
    runs, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - t0)
    return runs[0], min(runs), result


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.queries", description=__doc__)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--days", type=float, default=30)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), REPO_ROOT / ".run" / "bench-q" / "pg")
    name = f"payment_monitor_queries_{uuid.uuid4().hex[:6]}"
    url = pg.create_database(name)
    spacing = args.days * 86400 / args.rows
    try:
        run_migrations(url)
        conn = psycopg2.connect(libpq_dsn(url))
        conn.autocommit = True
        cur = conn.cursor()
        step, started = 1_000_000, time.perf_counter()
        for table, sql in FILL:
            for lo in range(1, args.rows + 1, step):
                hi = min(args.rows, lo + step - 1)
                cur.execute(sql, {"end": END, "spacing": spacing, "lo": lo, "hi": hi,
                                  "rows": args.rows})
                print(f"  filling {table}: {hi:,} of {args.rows:,} "
                      f"({time.perf_counter() - started:.0f} s)", flush=True)
        cur.execute("ANALYZE")
        conn.close()
        print(f"filled {args.rows:,} payments over {args.days:g} days in "
              f"{time.perf_counter() - started:.0f} s")

        engine = create_db_engine(url)
        q = PaymentQueries(engine)
        flags = ComplianceFlags(engine)
        hour = TxFilter(END - timedelta(days=3, hours=1), END - timedelta(days=3))
        day = TxFilter(END - timedelta(days=4), END - timedelta(days=3))
        everything = TxFilter(END - timedelta(days=args.days + 1), END + timedelta(days=1))

        def flag_pages_20() -> Any:
            after = None
            for _ in range(20):
                _, after = flags.page(FlagFilter(rule="velocity", status="open"), limit=50,
                                      after=after)
            return after

        def page_50() -> Any:
            cursor = None
            for _ in range(50):
                cursor = q.transactions(TxFilter(day.start, day.end, channel="pos"),
                                        limit=100, cursor=cursor).next_cursor
            return cursor

        cases: list[tuple[str, str, Callable[[], Any]]] = [
            ("transactional", "lookup by transaction_id", lambda: q.transaction("tx4242424")),
            ("transactional", "metrics of one payment", lambda: q.metrics_of("tx4242400")),
            ("transactional", "one customer's payments, 30 days (customers show)",
             lambda: q.customer_payments("c4242", END - timedelta(days=30), END)),
            ("transactional", "a payment's re-sends (payments show)",
             lambda: q.resends("tx4242424")),
            ("transactional", "open velocity flags, first page of 50 (flags list)",
             lambda: flags.page(FlagFilter(rule="velocity", status="open"), limit=50)),
            ("transactional", "open velocity flags, pages 1-20 by cursor", flag_pages_20),
            ("transactional", "one customer's flags (customers show)",
             lambda: list(flags.select(FlagFilter(customer="c4200")))),
            ("aggregate", "open flags counted per rule and status",
             lambda: flags.counts(FlagFilter(status="open"))),
            ("transactional", "1 hour, channel=pos, first page of 100",
             lambda: q.transactions(TxFilter(hour.start, hour.end, channel="pos"))),
            ("transactional", "1 day, channel=pos, pages 1-50 by cursor", page_50),
            ("transactional", "1 day, merchant m0042 + approved, page of 1000",
             lambda: q.transactions(TxFilter(day.start, day.end, merchant_id="m0042",
                                             status="approved"), limit=1000)),
            ("transactional", "compliance rows by creation time, first page of 100",
             lambda: q.metric_rows(END - timedelta(days=3650), END + timedelta(days=3650),
                                   "compliance")),
            ("aggregate", "1 day summary by channel", lambda: q.summary(day, "channel")),
            ("aggregate", "1 day summary by merchant", lambda: q.summary(day, "merchant_id")),
            ("aggregate", "1 day compliance flags", lambda: q.compliance_flags(day)),
            ("aggregate", f"all {args.rows:,} rows summary by channel",
             lambda: q.summary(everything, "channel")),
            ("aggregate", f"all {args.rows:,} rows compliance flags",
             lambda: q.compliance_flags(everything)),
        ]
        print(f"queries on {args.rows:,} payments (first run / best of {args.repeat}); "
              f"targets: transactional < 5 s, aggregate < 30 s")
        for kind, label, fn in cases:
            first, best, _ = timed(fn, args.repeat)
            limit = 5.0 if kind == "transactional" else 30.0
            verdict = "ok" if first < limit else "OVER TARGET"
            print(f"  {kind:<13} {label:<52} {first * 1000:9.1f} / {best * 1000:9.1f} ms  "
                  f"{verdict}", flush=True)
    finally:
        pg.drop_database(name)
        pg.stop()


if __name__ == "__main__":
    main()
