"""The broker's own latency floor: a plain aiokafka consumer at a steady offered rate.

Same broker (Kafka on loopback, noida-db without a JVM), same simulator and pacing as
``benchmarks.pipeline``'s latency phase, but the consumer does nothing: p50/p95/p99
from each event's producer timestamp to the return of the fetch that brought it.

    python -m benchmarks.raw_latency --events 50000 --rate 5000
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer

from devtools.services import start_broker
from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import ensure_topic, produce
from storage.broker import connection


async def consume(bootstrap: str, total: int, latencies: list[float]) -> None:
    consumer = AIOKafkaConsumer("payments", **connection(bootstrap).client_kwargs(
        group_id="raw-latency", auto_offset_reset="earliest", max_poll_records=5000))
    await consumer.start()
    seen = 0
    try:
        while seen < total:
            batch = await consumer.getmany(timeout_ms=1000)
            now = time.time()
            for records in batch.values():
                latencies.extend(now - r.timestamp / 1000 for r in records)
                seen += len(records)
            if not batch:
                await asyncio.sleep(0.01)  # noida-db (no JVM) answers an empty fetch at once
    finally:
        await consumer.stop()


async def run(events: int, rate: float) -> list[float]:
    broker = start_broker(Path(tempfile.mkdtemp(prefix="raw-latency-")))
    try:
        await ensure_topic(broker.bootstrap, "payments", 4)
        latencies: list[float] = []
        reader = asyncio.create_task(consume(broker.bootstrap, events, latencies))
        await asyncio.sleep(2)  # joined and assigned before the first event
        await produce(PaymentGenerator(load_scenario(), seed=1).events(events),
                      broker=broker.bootstrap, topic="payments", total=events, rate=rate,
                      progress=False)
        await reader
        return sorted(latencies)
    finally:
        broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.raw_latency", description=__doc__)
    p.add_argument("--events", type=int, default=50_000)
    p.add_argument("--rate", type=float, default=5000)
    args = p.parse_args()
    lat = asyncio.run(run(args.events, args.rate))
    pct = {q: round(lat[int(q * (len(lat) - 1))] * 1000, 1) for q in (0.5, 0.95, 0.99)}
    print(f"raw aiokafka consumer, {args.rate:,.0f} events/s offered: "
          f"p50 {pct[0.5]} ms, p95 {pct[0.95]} ms, p99 {pct[0.99]} ms")


if __name__ == "__main__":
    main()
