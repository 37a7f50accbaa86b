"""Send generated events to Kafka with aiokafka, at a target rate, with progress."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from tqdm import tqdm

from models.errors import PaymentMonitorError
from simulator.generator import SimEvent
from storage.broker import (
    BrokerConnection,
    BrokerError,
    TopicSpec,
    connection,
    describe_failure,
    ensure_topics,
    explain,
)


class BrokerUnreachable(PaymentMonitorError, RuntimeError):
    """The broker did not answer."""


@dataclass
class RunSummary:
    produced: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        return self.produced / self.seconds if self.seconds else 0.0

    def lines(self) -> list[str]:
        valid = self.kinds.get("valid", 0)
        dup = self.kinds.get("duplicate", 0)
        invalid = self.produced - valid - dup
        return [
            f"produced {self.produced:,} events in {self.seconds:.1f} s ({self.rate:,.0f}/s)",
            f"  valid {valid:,}  invalid {invalid:,}  duplicates {dup:,}",
        ]


async def ensure_topic(broker: str | BrokerConnection, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` unless it exists (never let a broker pick).

    On Event Hubs the hub must exist already (it is checked, not created).
    """
    try:
        await ensure_topics(broker, [TopicSpec(topic, partitions, compacted=False)])
    except BrokerError as exc:
        raise BrokerUnreachable(str(exc)) from exc


async def produce(
    events: Iterable[SimEvent],
    *,
    broker: str | BrokerConnection,
    topic: str,
    total: int,
    rate: float = 0.0,
    progress: bool = True,
) -> RunSummary:
    """Send ``events`` keyed by merchant; ``rate`` events/s at most (0: as fast as possible)."""
    conn = connection(broker)
    producer = AIOKafkaProducer(**conn.client_kwargs(
        linger_ms=5, max_batch_size=256 * 1024, acks=1, request_timeout_ms=30_000))
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise BrokerUnreachable(await describe_failure(exc, conn)) from exc
    summary = RunSummary()
    bar = tqdm(total=total, unit="ev", disable=not progress, mininterval=0.5, smoothing=0.1)
    started = time.perf_counter()
    pending: list[asyncio.Future] = []
    try:
        for i, event in enumerate(events):
            if rate:
                ahead = started + i / rate - time.perf_counter()
                if ahead > 0.005:  # sleep in 5 ms steps, not once per event
                    await asyncio.sleep(ahead)
            pending.append(await producer.send(topic, event.value, key=event.key))
            summary.kinds[event.kind] += 1
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                bar.update(len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        bar.update(len(pending))
        await producer.flush()
    except KafkaError as exc:
        raise BrokerUnreachable(f"sending to {topic}: {explain(exc, conn)}") from exc
    finally:
        bar.close()
        await producer.stop()
    summary.produced = sum(summary.kinds.values())
    summary.seconds = time.perf_counter() - started
    return summary
