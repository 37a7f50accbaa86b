"""PostgreSQL sink throughput: ``python -m benchmarks.sinks``.

Writes simulator payments with their extracted metrics through
:class:`storage.postgres.PostgresSink`, in sink transactions of ``--batch``
payments (the worker merges queued batches into one transaction the same
way), into a fresh database migrated to head. Prints payments/s and rows/s
per table for:

- ``normalized_transactions`` + ``dynamic_metrics`` (+ failed items and window
  partials), the per-event write;
- the same with the rules over a customer's payments judged (velocity, structuring:
  :mod:`storage.customer_rules`), to show what judging them costs;
- ``normalized_transactions`` alone (metrics left out), to show what the
  ``dynamic_metrics`` COPY costs;
- ``histogram_partials`` + ``aggregate_histograms`` (``write_windows``), the
  per-commit write of windowed metrics.

The target: the sinks keep up with 10,000 payments/s. PostgreSQL runs on the
same 2 cores here, so the figures include its own CPU.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from pathlib import Path

import numpy as np

from devtools.services import ensure_postgres
from devtools.stack import REPO_ROOT, run_migrations
from pipeline.batches import SinkBatch
from pipeline.columns import PaymentColumns
from pipeline.windows import HistogramPartials, WindowedBatch, WindowMetrics
from simulator.generator import PaymentGenerator, load_scenario
from storage.config_sources import compile_files
from storage.postgres import PostgresSink, create_db_engine


class Msg:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def batches(n: int, size: int, seed: int, with_metrics: bool,
            with_rules: bool = False, customers: int | None = None) -> list[SinkBatch]:
    validator, engine = compile_files().validator, compile_files().engine
    rules = engine.customer_rules if with_rules else ()
    scenario = load_scenario()
    if customers:
        scenario["customers"] = customers
    out, payments = [], {}
    for offset, e in enumerate(PaymentGenerator(scenario, seed=seed).events(n)):
        tx = validator.parse(e.value).transaction
        if tx is None:
            continue
        payments[offset] = tx
        if len(payments) == size:
            metrics = engine.extract_batch(PaymentColumns(payments, payments.values())) \
                if with_metrics else None
            out.append(SinkBatch("payments", 0, [Msg(o) for o in payments], payments, [], [],
                                 time.time(), metrics, engine.version, customer_rules=rules))
            payments = {}
    if payments:
        metrics = engine.extract_batch(PaymentColumns(payments, payments.values())) \
            if with_metrics else None
        out.append(SinkBatch("payments", 0, [Msg(o) for o in payments], payments, [], [],
                             time.time(), metrics, engine.version, customer_rules=rules))
    return out


def run(sink: PostgresSink, work: list[SinkBatch]) -> tuple[float, dict[str, int]]:
    rows: dict[str, int] = {}
    started = time.perf_counter()
    for b in work:
        for table, n in sink.write([b]).items():
            rows[table] = rows.get(table, 0) + n
    return time.perf_counter() - started, rows


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sinks", description=__doc__)
    p.add_argument("--payments", type=int, default=50_000)
    p.add_argument("--batch", type=int, default=2_000, help="payments per transaction")
    p.add_argument("--customers", type=int, default=None,
                   help="customers the payments are spread over (default: the scenario's "
                        "50,000); fewer make the velocity rule fire more often, as in "
                        "make bench's latency phase")
    args = p.parse_args()
    workdir = REPO_ROOT / ".run" / "bench-sinks"
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), Path(workdir) / "pg")
    name = f"payment_monitor_sinks_{uuid.uuid4().hex[:6]}"
    url = pg.create_database(name)
    try:
        run_migrations(url)
        engine = compile_files().engine
        db = create_db_engine(url)
        sink = PostgresSink(db)
        print(f"{args.payments:,} payments per run, {args.batch:,} per transaction, "
              f"{args.customers or 50_000:,} customers, PostgreSQL on this machine")
        for label, seed, with_metrics, with_rules in (
                ("transactions + dynamic_metrics", 1, True, False),
                ("the same + customer rules", 4, True, True),
                ("transactions only", 2, False, False)):
            work = batches(args.payments, args.batch, seed, with_metrics, with_rules,
                           args.customers)
            n = sum(len(b.payments) for b in work)
            secs, rows = run(sink, work)
            per_table = ", ".join(f"{t} {r / secs:,.0f} rows/s" for t, r in rows.items() if r)
            print(f"  {label:<32} {n / secs:>9,.0f} payments/s  ({per_table})")

        # windowed metrics: one commit's worth of window values per partition
        work = batches(args.payments, args.batch, 3, True)
        values = []
        for partition, b in enumerate(work):
            assert b.metrics is not None
            late = np.zeros(len(b.metrics), np.bool_)
            deltas = WindowedBatch(b.metrics, 300, late, [], engine.bounds).deltas()
            w = WindowMetrics(last_offset=max(last for _, last in deltas.values()))
            for hists, _ in deltas.values():
                w.merge(hists)
            partials = HistogramPartials()
            partials.add(300, 1_790_000_000, partition % 8, w)
            values.append(partials)
        started = time.perf_counter()
        written = 0
        for rows in values:
            written += sink.write_windows(rows)["histogram_partials"]
        secs = time.perf_counter() - started
        print(f"  {'window metrics (per commit)':<32} {len(values) / secs:>9,.1f} commits/s  "
              f"({written / secs:,.0f} histogram_partials rows/s, "
              f"{written / len(values):,.0f} rows per commit)")
    finally:
        pg.drop_database(name)
        pg.stop()


if __name__ == "__main__":
    main()
