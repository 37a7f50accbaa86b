"""Metric extraction throughput on one core: ``python -m benchmarks.extract``.

Realistic simulator payments (parsed beforehand), the shipped
``config/metrics.yaml`` and ``config/compliance.yaml``, each payment with a
customer history like the worker's (the partition's earlier payments). Prints
transactions/s and metrics/s for:

- extraction (``MetricEngine.extract``: what the worker does per payment);
- extraction + windowed aggregation (grouping the windowed metrics of a batch
  into histograms, as the ingest handler does per batch);
- extraction + the ``dynamic_metrics`` JSON (``rows`` + orjson, as the sink does);
- extraction with every metric spelled out as a ``DynamicMetric`` object.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable

import orjson

from pipeline.windows import observe
from runtime.settings import Settings
from simulator.generator import PaymentGenerator, load_scenario
from storage.config_sources import compile_files


def best(fn: Callable[[], int], n: int, repeat: int) -> tuple[float, float]:
    """(transactions/s, metrics/s), best of ``repeat``."""
    top = (0.0, 0.0)
    for _ in range(repeat):
        started = time.perf_counter()
        metrics = fn()
        elapsed = time.perf_counter() - started
        if n / elapsed > top[0]:
            top = (n / elapsed, metrics / elapsed)
    return top


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.extract", description=__doc__)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=1000, help="payments per aggregation batch")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    args = p.parse_args()
    gc.set_threshold(*Settings().gc_thresholds)  # as the worker does (runtime/faust_app.py)
    validator = compile_files().validator
    payments = []
    for e in PaymentGenerator(load_scenario(), seed=1).events(args.events):
        tx = validator.parse(e.value).transaction
        if tx is not None:
            payments.append(tx)
    engine = compile_files().engine
    history: dict[str, list] = {}
    items = []
    for offset, tx in enumerate(payments):
        entries = history.setdefault(tx.customer_id, [])
        items.append((offset, tx, list(entries)))
        entries.append((tx.event_ts, offset, tx.amount_minor, tx.currency))
    n = len(items)

    def extract() -> int:
        return sum(len(engine.extract(tx, o, lambda c, h=h: h)) for o, tx, h in items)

    def extract_and_window() -> int:
        total = 0
        for i in range(0, n, args.batch):
            entries = []
            for o, tx, h in items[i:i + args.batch]:
                result = engine.extract(tx, o, lambda c, h=h: h)
                total += len(result)
                entries.append((o, result))
            observe(entries, engine.bounds)
        return total

    def extract_and_json() -> int:
        total = 0
        for o, tx, h in items:
            result = engine.extract(tx, o, lambda c, h=h: h)
            total += len(result)
            for _, data in result.rows():
                orjson.dumps(data)
        return total

    def extract_objects() -> int:
        return sum(len(engine.extract(tx, o, lambda c, h=h: h).metrics) for o, tx, h in items)

    results = {
        "extraction (worker)": best(extract, n, args.repeat),
        "extraction + windowed aggregation": best(extract_and_window, n, args.repeat),
        "extraction + dynamic_metrics JSON": best(extract_and_json, n, args.repeat),
        "extraction as DynamicMetric objects": best(extract_objects, n, args.repeat),
    }
    per_tx = sum(len(engine.extract(tx, o, lambda c, h=h: h)) for o, tx, h in items) / n
    if args.json:
        print(json.dumps({"transactions": n, "metrics_per_transaction": round(per_tx, 1),
                          "per_second": {k: {"transactions": round(t), "metrics": round(m)}
                                         for k, (t, m) in results.items()}}))
        return
    print(f"metric extraction, {n:,} payments, {per_tx:.1f} metrics per payment "
          f"(config {engine.version}), one core, best of {args.repeat}:")
    for name, (tps, mps) in results.items():
        print(f"  {tps:>9,.0f} transactions/s  {mps:>12,.0f} metrics/s  {name}")


if __name__ == "__main__":
    main()
