"""CPU of the duplicate state's expiry: :meth:`tables.seen.SeenIds.purge` over ids that
have all expired, with the customer histories on RocksDB, as the worker's timer runs it
(``DEDUPE_PURGE_INTERVAL_S``, default 600 s: each run purges that long of accepted ids).

It prints µs of CPU per id, and what one timer run costs at a given accepted rate: the
time the event loop would be held without the turns :meth:`SeenIds.purge_async` gives it.

    python -m benchmarks.purge --ids 400000 --rate 5000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.histories import offline_seen_table
from tables.context import placeholder_message
from tables.histories import CustomerHistories
from tables.seen import SeenIds

PARTITIONS = 4
FLUSH_EVERY = 20_000  # ids between flushes (a few seconds of traffic)


def message(partition: int, offset: int):  # noqa: ANN201 - a Faust Message
    m = placeholder_message("payments", partition)
    m.offset = offset
    return m


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.purge", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ids", type=int, default=400_000, help="expired ids to purge")
    p.add_argument("--rate", type=float, default=5_000, help="accepted payments/s to scale to")
    p.add_argument("--interval", type=float, default=600, help="DEDUPE_PURGE_INTERVAL_S")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        app, table = offline_seen_table(tmp, PARTITIONS)
        seen = SeenIds(app, table, expiry=3600, ids_in_memory=False,
                       histories=CustomerHistories(Path(tmp) / "histories"))
        for partition in range(PARTITIONS):
            seen.first_seen(partition, "-", 0.0)
        print(f"recording {args.ids:,} ids ...", flush=True)
        for i in range(args.ids):
            seen.add(i % PARTITIONS, f"tx-{i:012d}-0123456789ab", i, 1000.0,
                     (f"cust-{i % 50_000:06d}", 1.8e9 + i / 4000, 1000 + i % 900_000, "EUR"))
            if i % FLUSH_EVERY == FLUSH_EVERY - 1 or i == args.ids - 1:
                for partition in range(PARTITIONS):
                    seen.flush(partition, message(partition, i))
        started, cpu = time.perf_counter(), time.process_time()
        dropped = seen.purge(set(range(PARTITIONS)), lambda q: message(q, 0), now=1000.0 + 3601)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        seen.histories.close()
    per_id = cpu / dropped * 1e6
    run = args.rate * args.interval * per_id / 1e6
    print(f"purged {dropped:,} ids in {wall:.2f} s ({cpu:.2f} s CPU): {per_id:.1f} µs per id")
    print(f"one timer run at {args.rate:,.0f} accepted/s every {args.interval:.0f} s: "
          f"{args.rate * args.interval:,.0f} ids, {run:.1f} s of CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
