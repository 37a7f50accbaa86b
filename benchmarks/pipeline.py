"""``make bench``: pipeline throughput and latency against a raw aiokafka consumer.

One run, one broker (noida-db on loopback), one worker process:

1. produce N events (2 % invalid) to ``payments``;
2. raw: a plain aiokafka consumer reads all N (no processing): events/s;
   with ``--stock``, also a stock Faust agent that only parses each event
   (``benchmarks/stock_app.py``), the per-event path this design replaces;
3. pipeline: ``faust -A app worker`` consumes the same N with everything on
   (parse, validate, both window tables with changelogs, DLQ, PostgreSQL,
   Parquet, commits): events/s from its first batch to its last, and the
   time until every offset is committed;
4. latency: the simulator offers a steady R events/s for T seconds to the
   caught-up worker; p50/p95/p99 from each event's producer timestamp to the
   end of its batch's table update.

    python -m benchmarks.pipeline --events 200000 --rate 5000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from devtools.services import ensure_postgres
from devtools.stack import REPO_ROOT, Stack
from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import ensure_topic, produce


async def raw_consume(bootstrap: str, topic: str, total: int) -> tuple[int, float]:
    """Read ``total`` records with a plain aiokafka consumer; (records, seconds)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"raw-{uuid.uuid4()}",
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                max_poll_records=5000)
    await consumer.start()
    n, first = 0, None
    try:
        while n < total:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            if batch and first is None:
                first = time.perf_counter()
            n += sum(len(v) for v in batch.values())
        return n, time.perf_counter() - (first or time.perf_counter())
    finally:
        await consumer.stop()


def run_stock_agent(stack: Stack, events: int) -> float:
    """Time ``benchmarks.stock_app`` (its own consumer group) over the same events."""
    from devtools.services import free_port, stop_process
    from devtools.stack import FAUST

    result = stack.workdir / "stock.json"
    (stack.workdir / "stock").mkdir(exist_ok=True)
    env = stack.worker_env("stock", APP_ID="stock-bench", BENCH_EVENTS=str(events),
                           BENCH_RESULT=str(result), WEB_PORT=str(free_port()))
    log = open(stack.workdir / "stock.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([FAUST, "-A", "benchmarks.stock_app", "worker", "-l", "warn"],
                            cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while not result.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"stock agent did not finish; see {log.name}")
            time.sleep(0.5)
        data = json.loads(result.read_text())
        return data["events"] / data["seconds"]
    finally:
        stop_process(proc)
        log.close()


def post(url: str) -> None:
    req = urllib.request.Request(url, data=b"", method="POST")
    urllib.request.urlopen(req, timeout=5).read()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.pipeline", description=__doc__)
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--rate", type=float, default=5000, help="offered events/s for latency")
    p.add_argument("--seconds", type=float, default=20, help="length of the latency phase")
    p.add_argument("--workdir", default=str(REPO_ROOT / ".run" / "bench"))
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--stock", action="store_true", help="also time a stock Faust agent")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="worker setting for this run, e.g. --env PARQUET_FLUSH_SECONDS=60")
    args = p.parse_args(argv)

    # a SIGTERM (timeout, kill) unwinds through the finally below: no orphaned worker
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(args.workdir)
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), workdir / "pg")
    run_id = uuid.uuid4().hex[:6]
    stack = Stack.start(workdir / run_id, pg, f"payment_monitor_bench_{run_id}")
    try:
        boot = stack.broker.bootstrap
        asyncio.run(ensure_topic(boot, "payments", stack.partitions))
        events = PaymentGenerator(load_scenario(), seed=1, invalid_ratio=0.02).events(args.events)
        print(f"producing {args.events:,} events ...", flush=True)
        asyncio.run(produce(events, broker=boot, topic="payments", total=args.events,
                            progress=False))

        n, secs = asyncio.run(raw_consume(boot, "payments", args.events))
        raw_rate = n / secs
        print(f"raw aiokafka consumer: {n:,} records in {secs:.2f} s = {raw_rate:,.0f}/s",
              flush=True)

        stock_rate = None
        if args.stock:
            stock_rate = run_stock_agent(stack, args.events)
            print(f"stock Faust agent (parse only): {stock_rate:,.0f}/s", flush=True)

        started = time.monotonic()
        worker = stack.start_worker(**dict(kv.split("=", 1) for kv in args.env))
        stack.wait_until_committed(args.events, timeout=900)
        committed_after = time.monotonic() - started
        stats = worker.stats()["ingest"]
        pipe_rate = stats["events_per_second"]
        print(f"pipeline: {stats['consumed']:,} events at {pipe_rate:,.0f}/s (first to last "
              f"batch); all committed {committed_after:.1f} s after the worker started",
              flush=True)

        post(f"{worker.web_url}/payments/stats/reset/")
        total = int(args.rate * args.seconds)
        steady = PaymentGenerator(load_scenario(), seed=2, invalid_ratio=0.02).events(total)
        print(f"latency: offering {args.rate:,.0f} events/s for {args.seconds:.0f} s ...",
              flush=True)
        offered = asyncio.run(produce(steady, broker=boot, topic="payments", total=total,
                                      rate=args.rate, progress=False))
        stack.wait_until_committed(args.events + total, timeout=300)
        final = worker.stats()["ingest"]
        lat = final["latency_ms"]
        figures = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python "
                       f"{platform.python_version()}",
            "events": args.events,
            "raw_aiokafka_events_per_s": round(raw_rate),
            "pipeline_events_per_s": round(pipe_rate),
            "pipeline_to_raw_ratio": round(pipe_rate / raw_rate, 3),
            "stock_faust_agent_parse_only_per_s": round(stock_rate) if stock_rate else None,
            "all_committed_s": round(committed_after, 1),
            "latency_offered_per_s": args.rate,
            "latency_achieved_offer_per_s": round(offered.rate),
            "latency_ms_p50": lat["p50"],
            "latency_ms_p95": lat["p95"],
            "latency_ms_p99": lat["p99"],
            "of_which_until_fetched_ms_p50_p95": [final["fetch_latency_ms"]["p50"],
                                                  final["fetch_latency_ms"]["p95"]],
            "batches_in_latency_phase": final["batches"],
        }
        print("\n" + "\n".join(f"{k:<30} {v}" for k, v in figures.items()))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2))
        return 0
    finally:
        stack.stop(drop_database=True)
        pg.stop()


if __name__ == "__main__":
    raise SystemExit(main())
