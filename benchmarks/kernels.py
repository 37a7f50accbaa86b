"""The columnar kernels against the per-event code they replace, per batch size, one core:
``python -m benchmarks.kernels``.

Simulator payments (parsed beforehand), the shipped configuration, batches of
``--batch`` payments (1,000 is a full-speed fetch; about 100 is what a worker gets at
5,000/s). Prints µs per payment, best of ``--repeat``, for each stage: the columns
(``PaymentColumns``), metric extraction (``extract_batch`` against ``extract`` per
payment), windowed metrics (``WindowedBatch.deltas`` against ``observe``), and the
``dynamic_metrics`` COPY rows (``metric_rows`` against ``ExtractionResult.rows`` and
orjson per payment), the payments' own COPY input (``_transaction_copy``, Arrow's
CSV writer, against ``_transaction_row`` per payment; the sink makes it once a round, for
every batch the round gathered: hundreds to thousands of payments), and the lake's rows
(``storage.parquet._rows``, its payment fields from the arrays the COPY input was made
from, against the same with the arrays made afresh for it).
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from models.records import Record
from pipeline.batches import SinkBatch
from pipeline.columns import PaymentColumns
from pipeline.windows import WindowedBatch, observe, window_start
from runtime.settings import Settings
from simulator.generator import PaymentGenerator, load_scenario
from storage.config_sources import compile_files
from storage.metric_rows import copy_text, metric_rows
from storage.parquet import _rows
from storage.payment_arrays import payment_arrays
from storage.postgres import _transaction_copy, _transaction_row


def best(fn: Callable[[Any], object], items: list, n: int, repeat: int) -> float:
    """µs per payment of ``fn`` over every item, best of ``repeat``."""
    top = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for item in items:
            fn(item)
        top = min(top, time.perf_counter() - started)
    return top / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--batch", type=int, action="append", help="payments a batch (repeat)")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    active = compile_files()
    engine = active.engine
    payments = [tx for e in PaymentGenerator(load_scenario(), seed=1).events(args.events)
                if (tx := active.validator.parse(e.value).transaction) is not None]
    gc.set_threshold(*Settings().gc_thresholds)  # as the worker does (runtime/faust_app.py)
    for size in args.batch or [1000, 125]:
        report(engine, payments, size, args.repeat)


def report(engine: Any, payments: list, size: int, repeat: int) -> None:
    """Print one batch size's figures."""
    batches = [(list(range(i, i + size)), payments[i:i + size])
               for i in range(0, len(payments) - size + 1, size)]
    n = len(batches) * size
    cols = [PaymentColumns(o, t) for o, t in batches]
    metrics = [engine.extract_batch(c) for c in cols]
    results = [[engine.extract(tx, o) for o, tx in zip(*b, strict=True)] for b in batches]
    none_late = np.zeros(size, np.bool_)

    def windows_each(k: int) -> None:
        groups: dict[int, list] = {}
        for offset, tx, result in zip(*batches[k], results[k], strict=True):
            groups.setdefault(window_start(tx.event_ts, 300), []).append((offset, result))
        for group in groups.values():
            observe(group, engine.bounds)

    def rows_each(k: int) -> None:
        for tx, result in zip(batches[k][1], results[k], strict=True):
            key = copy_text(tx.transaction_id)
            "".join(f"{key}\t{kind}\t{copy_text(orjson.dumps(data).decode())}\tv\n"
                    for kind, data in result.rows())

    # with their metrics, as the worker hands them over: the COPY input takes the numbers,
    # the status and the factorized text fields from the metrics' columns
    sinks = [SinkBatch("payments", 0, [], dict(zip(*b, strict=True)), [], [], 0.0, metrics[i],
                       "v") for i, b in enumerate(batches)]

    def copy_columns(i: int) -> bytes:
        sinks[i].arrow = None  # the payments' arrays are made once a batch: made afresh
        return _transaction_copy([sinks[i]])[1].read()

    # the lake's rows of the same batches (the Records' values: each payment as JSON)
    records = [[Record("payments", 0, o, 1.78e9, 0, (), b"k", orjson.dumps(tx.to_dict()),
                       None, 1) for o, tx in zip(*b, strict=True)] for b in batches]
    lakes = [SinkBatch("payments", 0, records[i], dict(zip(*b, strict=True)), [], [], 1.78e9,
                       metrics[i], "v") for i, b in enumerate(batches)]
    payment_arrays(lakes)  # made by the COPY input, before the lake takes them

    def lake_own(i: int) -> object:
        lakes[i].arrow = None  # the lake makes the payments' arrays itself
        return _rows([(lakes[i], records[i])])

    def copy_each(i: int) -> str:
        return "".join([_transaction_row(p, "payments", 0, o)
                        for o, p in sinks[i].payments.items()])

    k = list(range(len(batches)))
    stages = [
        ("columns", best(lambda i: PaymentColumns(*batches[i]), k, n, repeat), None),
        ("metric extraction", best(lambda i: engine.extract_batch(cols[i]), k, n, repeat),
         best(lambda i: [engine.extract(tx, o) for o, tx in zip(*batches[i], strict=True)],
              k, n, repeat)),
        ("windowed metrics", best(lambda i: WindowedBatch(
            metrics[i], 300, none_late, [], engine.bounds).deltas(), k, n, repeat),
         best(windows_each, k, n, repeat)),
        ("dynamic_metrics rows", best(lambda i: metric_rows(
            metrics[i], [tx.transaction_id for tx in batches[i][1]], "v"), k, n, repeat),
         best(rows_each, k, n, repeat)),
        ("payments' COPY input", best(copy_columns, k, n, repeat),
         best(copy_each, k, n, repeat)),
        ("lake rows", best(lambda i: _rows([(lakes[i], records[i])]), k, n, repeat),
         best(lake_own, k, n, repeat)),
    ]
    print(f"batches of {size:,} payments ({n:,} payments), µs per payment, best of "
          f"{repeat}:")
    for name, columnar, each in stages:
        versus = f"   {'own arrays' if name == 'lake rows' else 'per payment'} {each:6.2f}" \
            if each is not None else ""
        print(f"  {name:<22} columnar {columnar:6.2f}{versus}")


if __name__ == "__main__":
    main()
