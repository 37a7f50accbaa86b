"""SIGKILL the worker mid-stream, restart it: the end state equals an uninterrupted run's."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

import pytest

from simulator.generator import PaymentGenerator, load_scenario
from tests.e2e.conftest import assert_end_state
from tests.e2e.test_pipeline import send

START = datetime(2026, 11, 1, 10, 3, tzinfo=UTC)


@pytest.mark.parametrize("restart_with", ["same-datadir", "fresh-datadir"])
def test_sigkill_mid_stream_loses_and_duplicates_nothing(stack, restart_with):
    events = list(PaymentGenerator(load_scenario(), seed=33, invalid_ratio=0.03, start=START)
                  .events(40_000))
    worker = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="2")
    producer = threading.Thread(target=send, args=(stack, events), kwargs={"rate": 4000})
    producer.start()

    # wait until some offsets are committed and the worker is mid-stream, then kill it
    deadline = time.monotonic() + 60
    while stack.committed_and_end()[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    committed_at_kill = stack.committed_and_end()[0]
    worker.kill()
    producer.join()
    assert 0 < committed_at_kill < len(events), "the kill did not land mid-stream"

    stack.restart_broker()  # noida-db keeps a dead member forever; Kafka would expire it
    name = "w1" if restart_with == "same-datadir" else "w2"  # w2: tables rebuilt from changelog
    stack.start_worker(name, PARQUET_FLUSH_SECONDS="2")
    stack.wait_until_committed(len(events), timeout=240)
    assert_end_state(stack, events)
