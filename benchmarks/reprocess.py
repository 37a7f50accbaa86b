"""``reprocess`` over stored payments: ``python -m benchmarks.reprocess``.

Fills a fresh database (migrated to head) with ``--rows`` payments over ``--hours`` hours
of event time (1,000 merchants, 200,000 customers, 4 partitions), server-side, plus a
payment per partition 4 h later so every hour has settled; then runs ``reprocess`` over
the range under the shipped configuration, with the windows, and prints the time of each
phase (judging the flags and metric rows; rebuilding the windows) in wall seconds and in
this process's CPU seconds (PostgreSQL's work is in its own processes: wall time counts
it, CPU time does not), per payment.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from datetime import UTC, datetime, timedelta

import psycopg2

from benchmarks.queries import FILL
from devtools.services import ensure_postgres, libpq_dsn
from devtools.stack import REPO_ROOT, run_migrations
from storage.config_sources import compile_files
from storage.postgres import create_db_engine
from storage.reprocess import reprocess
from storage.window_rebuild import WindowPlan

END = datetime(2026, 11, 22, tzinfo=UTC)
TAIL = """
INSERT INTO normalized_transactions
SELECT 'tail-' || p, %(at)s, 'm0000', 'c0', 100, 'EUR', 'pos', 'card', 'approved', NULL,
       'DE', 50, NULL, NULL, NULL, 'payments', p, 1000000000, now()
FROM generate_series(0, 3) p
"""


def fill(url: str, rows: int, hours: float) -> None:
    spacing = hours * 3600 / rows
    with psycopg2.connect(libpq_dsn(url)) as conn, conn.cursor() as cur:
        cur.execute(FILL[0][1], {"end": END, "spacing": spacing, "lo": 1, "hi": rows})
        cur.execute(TAIL, {"at": END + timedelta(hours=4)})
        cur.execute("ANALYZE normalized_transactions")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--hours", type=float, default=2.0)
    args = parser.parse_args()
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), REPO_ROOT / ".run" / "bench-r" / "pg")
    name = f"pm_bench_reprocess_{uuid.uuid4().hex[:6]}"
    url = pg.create_database(name)
    try:
        run_migrations(url)
        print(f"filling {args.rows:,} payments over {args.hours} h ...", flush=True)
        fill(url, args.rows, args.hours)
        active = compile_files()
        since = END - timedelta(hours=args.hours)
        marks: dict[str, tuple[float, float]] = {}

        def flags_done(*_: object) -> None:
            marks["flags"] = (time.perf_counter(), time.process_time())

        def hour_done(until: datetime) -> None:
            print(f"  windows up to {until.isoformat()}", flush=True)

        wall, cpu = time.perf_counter(), time.process_time()
        report = reprocess(create_db_engine(url), active, since, END, progress=flags_done,
                           windows=WindowPlan((300, 3600), 7200), window_progress=hour_done)
        end_wall, end_cpu = time.perf_counter(), time.process_time()
        flags_wall, flags_cpu = marks["flags"]
        n = report.payments
        assert report.windows is not None
        print(f"payments: {n:,}; flags added {sum(report.added.values()):,}; windows "
              f"rebuilt {report.windows.rebuilt}, brought in {report.windows.brought_in:,}")
        for phase, w, c in (("flags and metric rows", flags_wall - wall, flags_cpu - cpu),
                            ("windows", end_wall - flags_wall, end_cpu - flags_cpu),
                            ("total", end_wall - wall, end_cpu - cpu)):
            print(f"{phase:<22} {w:7.1f} s wall ({n / w:8,.0f} payments/s) "
                  f"{c:7.1f} s CPU here ({c / n * 1e6:5.1f} µs/payment)")
    finally:
        pg.drop_database(name)
        pg.stop()


if __name__ == "__main__":
    main()
