"""The rules over a customer's payments on a dense table: ``python -m benchmarks.customer_rules``.

``make bench``'s latency phase stores its payments after the throughput phase's, on the
same customers and the same ten minutes of event time, so that most customers have more
than five payments in the velocity rule's window and it flags about a third of the new
payments. There the velocity judgement was 42 % of PostgreSQL's time
(``python -m benchmarks.pipeline --pg-statements``). This reproduces it without a broker
or a worker, through :class:`storage.postgres.PostgresSink`, into a fresh database
migrated to head:

1. ``--before`` payments (seed 1) in writes of 5,000, as the throughput phase stores them;
2. ``--after`` payments (seed 2, the same customers and event times) in writes of
   ``--batch``, the measured part: the time of each rule's judging statement, per write
   and per payment, and the flags it made;
3. with ``--explain N``, ``EXPLAIN (ANALYZE, BUFFERS)`` of the N-th measured write's
   statements, run in a savepoint that is rolled back (the write then runs as measured).

    python -m benchmarks.customer_rules --before 200000 --after 100000 --explain 20
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import storage.customer_rules as judging
from benchmarks.sinks import batches
from devtools.services import ensure_postgres
from devtools.stack import REPO_ROOT, run_migrations
from models.events import ParsedTransaction
from storage.postgres import PostgresSink, create_db_engine


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.customer_rules", description=__doc__)
    p.add_argument("--before", type=int, default=200_000, help="payments stored first")
    p.add_argument("--after", type=int, default=100_000, help="payments measured")
    p.add_argument("--batch", type=int, default=3_000, help="payments per measured write")
    p.add_argument("--explain", type=int, default=None, metavar="N",
                   help="print the plans of the N-th measured write's judging statements")
    args = p.parse_args()
    pg = ensure_postgres(os.environ.get("DATABASE_URL"),
                         REPO_ROOT / ".run" / "bench-customer-rules" / "pg")
    name = f"payment_monitor_rules_{uuid.uuid4().hex[:6]}"
    url = pg.create_database(name)
    seconds: dict[str, float] = defaultdict(float)
    writes = [0]
    judge = judging.judge

    class Timed:
        """The sink's cursor, each judging statement timed by its rule (and explained in
        the ``--explain`` write, in a savepoint rolled back before it runs)."""

        def __init__(self, cur: Any, explain: bool) -> None:
            self.cur, self.explain = cur, explain

        def execute(self, statement: str, values: dict[str, Any]) -> None:
            rule = values["rule"]
            if self.explain:
                self.cur.execute("SAVEPOINT explained")
                self.cur.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, values)
                print(f"{rule}, write {writes[0]}:")
                print("\n".join("  " + row[0][:200] for row in self.cur.fetchall()),
                      flush=True)
                self.cur.execute("ROLLBACK TO SAVEPOINT explained")
            started = time.perf_counter()
            self.cur.execute(statement, values)
            seconds[rule] += time.perf_counter() - started

        def fetchall(self) -> list[tuple[Any, ...]]:
            return self.cur.fetchall()

    def timed(cur: Any, rules: Sequence[Any], payments: Sequence[ParsedTransaction],
              version: str) -> list[str]:
        writes[0] += 1
        return judge(Timed(cur, writes[0] == args.explain), rules, payments, version)

    try:
        run_migrations(url)
        sink = PostgresSink(create_db_engine(url))
        first = batches(args.before, 5_000, 1, True, True)
        measured = batches(args.after, args.batch, 2, True, True)
        print(f"storing {args.before:,} payments first ...", flush=True)
        for b in first:
            sink.write([b])
        before = sink.compliance_flags()
        judging.judge = timed
        started = time.perf_counter()
        for b in measured:
            sink.write([b])
        elapsed = time.perf_counter() - started
        n = sum(len(b.payments) for b in measured)
        print(f"{n:,} payments in {writes[0]} writes of {args.batch:,}: {n / elapsed:,.0f}/s "
              f"through the sink, of which judging:")
        for kind, secs in sorted(seconds.items()):
            print(f"  {kind:<12} {secs:6.2f} s  {secs / writes[0] * 1000:6.1f} ms a write  "
                  f"{secs / n * 1e6:5.1f} us a payment")
        made = Counter(sink.compliance_flags())
        made.subtract(before)
        print("payments flagged among them: " + ", ".join(
            f"{k.removeprefix('compliance_')} {v:,}" for k, v in sorted(made.items())))
    finally:
        judging.judge = judge
        pg.drop_database(name)
        pg.stop()


if __name__ == "__main__":
    main()
