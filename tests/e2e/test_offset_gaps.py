"""Offsets with no record (transaction markers) must not stall commits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer

from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import ensure_topic
from tests.helpers import assert_end_state, read_topic


async def send_in_transactions(bootstrap: str, events, per_txn: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="gap-test")
    await producer.start()
    try:
        for i in range(0, len(events), per_txn):
            async with producer.transaction():
                for e in events[i:i + per_txn]:
                    await producer.send("payments", e.value, key=e.key)
    finally:
        await producer.stop()


def test_transaction_markers_do_not_stall_commits(stack):
    events = list(PaymentGenerator(load_scenario(), seed=55, invalid_ratio=0.02,
                                   start=datetime(2026, 11, 1, 12, 0, tzinfo=UTC))
                  .events(3_000))
    asyncio.run(ensure_topic(stack.broker.bootstrap, "payments", stack.partitions))
    stack.start_worker(PARQUET_FLUSH_SECONDS="1")
    asyncio.run(send_in_transactions(stack.broker.bootstrap, events, per_txn=50))
    _, end = stack.committed_and_end()
    assert end > len(events), "the broker wrote no transaction markers: nothing tested"
    # a partition's last marker has no record after it, so the committed offset ends
    # one short of it (as with any Kafka consumer); every marker before it is a gap
    records = asyncio.run(read_topic(stack.broker.bootstrap, "payments"))
    last = {}
    for r in records:
        last[r.partition] = max(last.get(r.partition, -1), r.offset)
    stack.wait_until_committed(sum(o + 1 for o in last.values()), timeout=120)
    assert_end_state(stack, events)
