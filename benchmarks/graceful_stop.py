"""How long a worker takes to stop on SIGTERM while it is busy:
``python -m benchmarks.graceful_stop --events 200000``.

The grace period of the StatefulSet (``terminationGracePeriodSeconds``) and of the
systemd unit (``TimeoutStopSec``) must outlast this. Sends ``--events`` payments, starts
a worker with the sink queue full (``SINK_QUEUE_EVENTS``, 50,000 by default), sends
SIGTERM once ``--after`` offsets are committed, and times the exit; then checks that the
committed offsets match what reached PostgreSQL (nothing half-written). Repeats
``--runs`` times and prints each figure.
"""

from __future__ import annotations

import argparse
import signal
import time
import uuid
from datetime import UTC, datetime

import psycopg2

from devtools.services import ensure_postgres, libpq_dsn
from devtools.stack import REPO_ROOT, Stack
from simulator.generator import PaymentGenerator, load_scenario


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.graceful_stop", description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--after", type=int, default=40_000, help="SIGTERM once this many are committed")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    workdir = REPO_ROOT / ".run" / "bench-stop"
    pg = ensure_postgres(None, workdir / "pg")
    events = list(PaymentGenerator(load_scenario(), seed=5, start=datetime(2026, 11, 1, tzinfo=UTC))
                  .events(args.events))
    try:
        for run in range(1, args.runs + 1):
            name = f"pm_stop_{uuid.uuid4().hex[:6]}"  # a fresh broker and database each run
            stack = Stack.start(workdir / name, pg, name)
            try:
                print(f"run {run}: sending {len(events):,} events", flush=True)
                stack.send(events)
                worker = stack.start_worker("w1")
                while stack.committed_and_end()[0] < args.after:
                    time.sleep(0.05)
                assert worker.proc is not None
                started = time.monotonic()
                worker.proc.send_signal(signal.SIGTERM)
                code = worker.proc.wait(600)
                took = time.monotonic() - started
                committed = stack.committed_and_end()[0]
                with psycopg2.connect(libpq_dsn(stack.database_url)) as conn, conn.cursor() as cur:
                    cur.execute("SELECT count(*) FROM normalized_transactions")
                    stored = cur.fetchone()[0]
                    cur.execute("SELECT count(*) FROM failed_items")
                    failed = cur.fetchone()[0]
                print(f"run {run}: SIGTERM -> exit {code} in {took:.2f} s; committed "
                      f"{committed:,} offsets, PostgreSQL holds {stored:,} payments + "
                      f"{failed:,} failed (>= committed: {stored + failed >= committed})",
                      flush=True)
            finally:
                stack.stop(drop_database=True)
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
