"""The simulator against the real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys

from aiokafka import AIOKafkaConsumer

from simulator.__main__ import main


async def read_all(bootstrap: str, topic: str, n: int) -> list:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    out = []
    try:
        while len(out) < n:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for records in batch.values():
                out.extend(records)
    finally:
        await consumer.stop()
    return out


def test_simulator_produces_keyed_events_to_a_declared_topic(broker, monkeypatch):
    monkeypatch.setenv("TOPIC_PARTITIONS", "3")
    assert main(["--count", "500", "--seed", "4", "--topic", "sim-test", "--quiet",
                 "--broker", broker.bootstrap]) == 0
    records = asyncio.run(read_all(broker.bootstrap, "sim-test", 500))
    assert len(records) == 500
    assert {r.partition for r in records} <= {0, 1, 2}
    by_key = {}
    for r in records:
        by_key.setdefault(r.key, set()).add(r.partition)
    assert all(len(parts) == 1 for parts in by_key.values())  # a merchant stays in one partition


def test_unreachable_broker_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "simulator", "--count", "5", "--broker",
                           "127.0.0.1:9", "--quiet"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "error: cannot reach the broker at 127.0.0.1:9" in proc.stderr
    assert "Traceback" not in proc.stderr
