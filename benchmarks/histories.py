"""CPU per payment of the duplicate state and the customer histories: in memory (before
ADR 0011) against on disk (RocksDB, :mod:`tables.histories`).

Both sides take the same payments (the default scenario's customers, spread over the
partitions as the simulator spreads them, a few seconds between flushes) and run the
shipped compliance rules on each, as the ingest handler does:

* **memory** (the design before ADR 0011): an id index (dict) and a
  :class:`~pipeline.metrics.SortedHistory` per customer, both in Python objects;
* **disk**: :class:`~tables.seen.SeenIds` as the worker runs it (``ids_in_memory=False``:
  PostgreSQL's claims decide duplicates), payments since the last flush in memory, the
  rest in RocksDB.

It prints µs per payment (process CPU time) for each and the Python heap each holds at
the end (tracemalloc is off while timing).

    python -m benchmarks.histories --payments 400000
"""

from __future__ import annotations

import argparse
import gc
import random
import tempfile
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from faust.types import TableT

from models.events import ParsedTransaction
from pipeline.config import ConfigManager
from pipeline.metrics import SortedHistory
from pipeline.parse import Validator
from runtime.faust_app import PaymentApp, create_app
from runtime.settings import Settings
from simulator.generator import PaymentGenerator, load_scenario
from storage.config_sources import FileSource
from tables.context import partition_context, placeholder_message
from tables.histories import CustomerHistories
from tables.seen import SeenIds, _chunked, declare_seen_table

PARTITIONS = 4


def payments(n: int, validator: Validator, seed: int = 1,
             ) -> list[tuple[int, ParsedTransaction]]:
    """The simulator's valid payments (default scenario), each with its partition."""
    out = []
    for event in PaymentGenerator(load_scenario(), seed=seed).events(n):
        tx = validator.parse(event.value, time.time()).transaction
        if tx is not None:
            out.append((zlib.crc32(event.key) % PARTITIONS, tx))
    return out


def run_memory(batch: list[tuple[int, ParsedTransaction]], extract: Callable, flush_every: int,
               table: TableT) -> object:
    messages = {p: placeholder_message("payments", p) for p in range(PARTITIONS)}
    index: dict[int, dict[str, tuple[int, float]]] = {p: {} for p in range(PARTITIONS)}
    customers: dict[int, dict[str, SortedHistory]] = {p: {} for p in range(PARTITIONS)}
    pending: dict[int, list[tuple]] = {}
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    for i, (p, tx) in enumerate(batch):
        offset = offsets[p] = offsets[p] + 1
        now = tx.event_ts
        entry = index[p].get(tx.transaction_id)
        if entry is None or now - entry[1] > 3600:
            index[p][tx.transaction_id] = (offset, now)
            pending.setdefault(p, []).append((tx.transaction_id, offset, now, tx.customer_id,
                                              tx.event_ts, tx.amount_minor, tx.currency))
            history = customers[p].get(tx.customer_id)
            if history is None:
                history = customers[p][tx.customer_id] = SortedHistory()
            history.add((tx.event_ts, offset, tx.amount_minor, tx.currency))
        part = customers[p]
        extract(tx, offset, lambda c, part=part: part.get(c, ()))
        if i % flush_every == flush_every - 1:  # the same table writes as SeenIds.flush
            for q, entries in pending.items():
                with partition_context(table.app, messages[q]):
                    for part in _chunked(entries):
                        table[f"{q}|{part[0][1]}"] = {
                            "ts": max(e[2] for e in part), "ids": [list(e) for e in part]}
            pending.clear()
    return index, customers


def run_disk(batch: list[tuple[int, ParsedTransaction]], extract: Callable, flush_every: int,
             seen: SeenIds) -> object:
    offsets = dict.fromkeys(range(PARTITIONS), 0)
    messages = {p: placeholder_message("payments", p) for p in range(PARTITIONS)}
    for i, (p, tx) in enumerate(batch):
        offset = offsets[p] = offsets[p] + 1
        seen.add(p, tx.transaction_id, offset, tx.event_ts,
                 (tx.customer_id, tx.event_ts, tx.amount_minor, tx.currency))
        extract(tx, offset, lambda c, p=p: seen.history(p, c))
        if i % flush_every == flush_every - 1:
            for q in range(PARTITIONS):
                seen.flush(q, messages[q])
    return seen


def seek_growth(total: int, step: int = 400_000) -> None:
    """What a velocity lookup costs on disk alone as the database grows: random customers
    of the default scenario, looked up around the newest time (no memory tier)."""
    rng = random.Random(1)
    customers = load_scenario()["customers"]
    with tempfile.TemporaryDirectory() as tmp:
        store = CustomerHistories(Path(tmp))
        start = time.time()
        for first in range(0, total, step):
            for partition in range(PARTITIONS):
                store.put(partition, [
                    (f"c{rng.randrange(customers):06d}", start + i / 8000, i,
                     rng.choice((4_500, 12_000)), "EUR")
                    for i in range(first + partition, first + step, PARTITIONS)])
            now = start + (first + step) / 8000
            t0 = time.process_time()
            for _ in range(20_000):
                found = store.between(rng.randrange(PARTITIONS),
                                      f"c{rng.randrange(customers):06d}", now - 600, now + 600)
                for n, _entry in enumerate(found):
                    if n >= 5:
                        break
            cost = (time.process_time() - t0) / 20_000 * 1e6
            print(f"{first + step:>10,} payments on disk: {cost:7.1f} us CPU per velocity "
                  f"lookup", flush=True)
        store.close()


def offline_seen_table(datadir: str, partitions: int) -> tuple[PaymentApp, TableT]:
    """A worker app on in-memory stores and its seen-ids table, with no broker: the
    table's changelog records are dropped (also used by ``benchmarks.purge``)."""
    app = create_app(Settings(store_url="memory://", app_datadir=datadir,
                              broker_url="kafka://127.0.0.1:1"))
    table = declare_seen_table(app, partitions)
    table.send_changelog = lambda *a, **k: SimpleNamespace(  # type: ignore[method-assign]
        message=SimpleNamespace(partition=0))
    return app, table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.histories", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payments", type=int, default=400_000)
    parser.add_argument("--rate", type=float, default=8000, help="payments/s, for the flushes")
    parser.add_argument("--flush-seconds", type=float, default=5.0)
    parser.add_argument("--seeks", type=int, metavar="N", help="instead: the cost of a "
                        "velocity lookup on disk alone as it grows to N payments")
    args = parser.parse_args(argv)
    if args.seeks:
        seek_growth(args.seeks)
        return 0

    config = ConfigManager(FileSource())
    config.load_all_configuration()
    extract = config.active.engine.extract
    batch = payments(args.payments, config.active.validator)
    flush_every = int(args.rate * args.flush_seconds)
    with tempfile.TemporaryDirectory() as tmp:
        app, table = offline_seen_table(tmp, PARTITIONS)
        seen = SeenIds(app, table, expiry=3600, ids_in_memory=False)
        results = {}
        for name, run in (("memory (before)", lambda: run_memory(batch, extract, flush_every,
                                                              table)),
                          ("disk (RocksDB)", lambda: run_disk(batch, extract, flush_every,
                                                              seen))):
            table.data.clear()  # each side starts from an empty table
            gc.collect()
            t0, thread0 = time.process_time(), time.thread_time()
            kept = run()
            cpu, thread = time.process_time() - t0, time.thread_time() - thread0
            del kept
            results[name] = cpu / len(batch) * 1e6
            print(f"{name:<16} {results[name]:6.1f} us CPU per payment ("
                  f"{thread / len(batch) * 1e6:.1f} in the thread that runs the rules)",
                  flush=True)
        seen.histories.close()
        # the heap each keeps, measured apart from the timing
        tracemalloc.start()
        held = run_memory(batch[: len(batch) // 4], extract, flush_every, table)
        heap = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del held
        print(f"memory (before) keeps {heap / (len(batch) // 4):.0f} bytes of Python heap per "
              f"payment; disk keeps none beyond the payments since the last flush")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
