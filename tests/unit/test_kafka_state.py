"""The Kafka clients' state the worker logs when it gives up on them (runtime.kafka_state)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

from aiokafka import AIOKafkaProducer

from runtime.kafka_state import client_state


def test_a_real_producer_and_every_task_and_thread_are_described():
    async def main():
        producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9")  # never started
        waiting = asyncio.Event()

        async def parked():
            await waiting.wait()

        task = asyncio.create_task(parked(), name="parked")
        await asyncio.sleep(0)
        try:
            app = SimpleNamespace(producer=SimpleNamespace(_producer=producer),
                                  consumer=SimpleNamespace())
            return client_state(app)
        finally:
            task.cancel()

    state = asyncio.run(main())
    json.dumps(state)  # it goes into one log line
    producer = state["producer"]
    assert producer["sender_task"] is None  # not started: no sender yet
    assert producer["pending_batches"] == {} and producer["in_flight_nodes"] == []
    assert producer["client"]["connections"] == {}
    assert "consumer" not in state  # no consumer thread: left out, not an error
    parked = [line for line in state["tasks"]["main loop"] if line.startswith("test_a_real")]
    assert parked and "parked@" in parked[0] and "wait@" in parked[0]  # where it waits
    assert "MainThread" in state["threads"]


def test_attributes_it_does_not_find_leave_entries_out_and_raise_nothing():
    class Broken:
        def __getattr__(self, name):
            raise RuntimeError(name)

    state = client_state(SimpleNamespace(producer=Broken(), consumer=Broken()))
    assert "producer" not in state and "consumer" not in state
    assert "threads" in state
