"""The newest records of a topic, read outside any consumer group: what a candidate
configuration is tried on before it is pushed (``faust -A app config push``)."""

from __future__ import annotations

import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from storage.broker import BrokerConnection, connection, existing_partitions


async def recent_records(broker: str | BrokerConnection, topic: str, per_partition: int,
                         *, timeout_s: float = 20.0) -> list[tuple[bytes | None, float]]:
    """Up to ``per_partition`` of the newest records of each partition of ``topic``, as
    ``(value, record timestamp in seconds)``; empty when the topic does not exist."""
    conn = connection(broker)
    count = (await existing_partitions(conn, [topic])).get(topic)
    if not count:
        return []
    consumer = AIOKafkaConsumer(**conn.client_kwargs(enable_auto_commit=False,
                                                     max_poll_records=per_partition))
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(count)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        starts = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(starts[tp], ends[tp] - per_partition))
        out: list[tuple[bytes | None, float]] = []
        pending = {tp for tp in tps if ends[tp] > starts[tp]}
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            batches = await consumer.getmany(*pending, timeout_ms=1000)
            for tp, records in batches.items():
                out.extend((r.value, r.timestamp / 1000.0) for r in records
                           if r.offset < ends[tp])
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
        return out
    finally:
        await consumer.stop()
