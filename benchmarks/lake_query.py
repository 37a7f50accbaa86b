"""One-hour queries over a generated lake: ``python -m benchmarks.lake_query``.

Writes a synthetic lake as the worker's Delta table (its schema, ``date``/``hour``
partitions, one append and one file per source partition and hour, as a compaction
leaves it, realistic ~300-byte payloads), ``--hours`` hours at ``--per-hour`` events
each, then times, with a cold Python process cache (files re-opened each time):

- a one-hour range, every column (the CLI's export);
- a one-hour range for one merchant (filter pushed down);
- the same merchant query on lakes of increasing size (``--hours`` steps), to show
  that pruning keeps the cost proportional to the hour queried, not to the lake.

The seed's target: one hour out of a day at 1,000 events/s (3.6 million events an
hour, 86.4 million a day) in under 5 s. Generate ``--per-hour 3600000`` for the real
size (about 1 GB an hour on disk) or a smaller hour and read the scaling.
"""

from __future__ import annotations

import argparse
import random
import shutil
import time
from datetime import UTC, datetime, timedelta

import orjson
import pyarrow as pa

from devtools.stack import REPO_ROOT
from storage.delta import RawTable
from storage.lake import LakeQuery, RawEventLake
from storage.parquet import TABLE_SCHEMA

START = datetime(2026, 11, 1, tzinfo=UTC)
PARTITIONS = 4


def write_hour(table: RawTable, hour: int, n: int, rng: random.Random) -> None:
    t0 = START + timedelta(hours=hour)
    per = n // PARTITIONS
    for p in range(PARTITIONS):
        first = hour * per
        times = [t0 + timedelta(seconds=3600 * i / per) for i in range(per)]
        merchants = [f"m{rng.randrange(1000):05d}" for _ in range(per)]
        values = [orjson.dumps({"schema_version": "1", "transaction_id": f"tx-{p}-{first + i}",
                                "event_time": times[i].isoformat(), "merchant_id": merchants[i],
                                "customer_id": f"c{rng.randrange(50000):06d}",
                                "amount_minor": rng.randrange(100, 100000), "currency": "EUR",
                                "channel": "pos", "payment_method": "card",
                                "status": "approved", "country": "DE",
                                "processing_ms": rng.randrange(50, 900)})
                  for i in range(per)]
        rows = pa.table({
            "topic": ["payments"] * per, "partition": [p] * per,
            "offset": list(range(first, first + per)),
            "key": [m.encode() for m in merchants], "value": values,
            "broker_timestamp": times, "arrival_time": times, "accepted": [True] * per,
            "error_category": [None] * per,
            "transaction_id": [f"tx-{p}-{first + i}" for i in range(per)],
            "event_time": times, "merchant_id": merchants,
            "amount_minor": [rng.randrange(100, 100000) for _ in range(per)],
            "currency": ["EUR"] * per, "channel": ["pos"] * per,
            "status": ["approved"] * per,
            "customer_id": [f"c{rng.randrange(50000):06d}" for _ in range(per)],
            "date": [f"{t0:%Y-%m-%d}"] * per, "hour": [f"{t0:%H}"] * per},
            schema=TABLE_SCHEMA)
        table.append(rows, f"payments-{p}", first + per - 1)


def timed(lake: RawEventLake, query: LakeQuery, columns=None) -> tuple[float, int]:
    started = time.perf_counter()
    rows = sum(b.num_rows for b in lake.scan(query, columns=columns))
    return time.perf_counter() - started, rows


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lake_query", description=__doc__)
    p.add_argument("--per-hour", type=int, default=360_000, help="events per hour")
    p.add_argument("--hours", type=int, nargs="+", default=[1, 6, 24],
                   help="lake sizes in hours to query")
    args = p.parse_args()
    root = REPO_ROOT / ".run" / "bench-lake"
    shutil.rmtree(root, ignore_errors=True)
    rng = random.Random(7)
    lake = RawEventLake(str(root))
    hour = LakeQuery(START + timedelta(hours=0), START + timedelta(hours=1))
    merchant = LakeQuery(hour.start, hour.end, merchant_id="m00042")
    written = 0
    print(f"lake of {args.per_hour:,} events an hour, {PARTITIONS} files an hour")
    try:
        for size in sorted(args.hours):
            while written < size:
                write_hour(lake.table, written, args.per_hour, rng)
                written += 1
                print(f"  wrote hour {written} of {max(args.hours)}", flush=True)
            disk = sum(f.stat().st_size for f in root.rglob("*.parquet"))
            full_s, full_n = timed(lake, hour)
            m_s, m_n = timed(lake, merchant)
            print(f"{size:>3} h lake ({size * args.per_hour:>12,} events, {disk / 2**20:,.0f} "
                  f"MiB): one hour, all columns {full_s:6.2f} s ({full_n:,} rows); one hour, one "
                  f"merchant {m_s:6.2f} s ({m_n:,} rows)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
