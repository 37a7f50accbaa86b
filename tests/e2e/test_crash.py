"""SIGKILL the worker mid-stream, again and again: the end state equals an uninterrupted run's.

The broker is never restarted: Kafka expires the dead member's session
(``BROKER_SESSION_TIMEOUT_S``, 10 s in the tests) and the restarted worker takes
the partitions over from the last committed offsets.
"""

from __future__ import annotations

import random
import threading
import time
from datetime import UTC, datetime

import pytest

from devtools.stack import Stack
from simulator.generator import PaymentGenerator, load_scenario
from tests.e2e.conftest import assert_end_state
from tests.e2e.test_pipeline import send

START = datetime(2026, 11, 1, 10, 3, tzinfo=UTC)


def kill_and_restart(stack: Stack, events: list, kills: int, *, rate: float, seed: int,
                     fresh_datadir: bool = False,
                     gap: tuple[int, int] = (1000, 4000)) -> list[int]:
    """Send ``events`` at ``rate`` while SIGKILLing the worker ``kills`` times; after each
    kill a worker starts again (with a fresh RocksDB directory when ``fresh_datadir``:
    tables rebuilt from the changelogs). Each kill lands once the running worker has
    committed a random ``gap`` (1,000-4,000) offsets more than at the last kill, a
    random moment after a commit. Returns the committed offsets at each kill."""
    rng = random.Random(seed)
    producer = threading.Thread(target=send, args=(stack, events), kwargs={"rate": rate})
    worker = stack.start_worker("w0", PARQUET_FLUSH_SECONDS="1")
    producer.start()
    at_kill: list[int] = []
    for i in range(kills):
        target = (at_kill[-1] if at_kill else 0) + rng.randint(*gap)
        deadline = time.monotonic() + 240
        while stack.committed_and_end()[0] < target:
            assert time.monotonic() < deadline, f"kill {i}: never reached offset {target}"
            assert worker.alive(), f"the worker died by itself; see {worker.log_path}"
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5))
        at_kill.append(stack.committed_and_end()[0])
        worker.kill()
        if stack.broker.kind == "noida-db":  # it never expires the dead member (no JVM here)
            stack.restart_broker()
        name = f"w{i + 1}" if fresh_datadir else "w0"
        worker = stack.start_worker(name, PARQUET_FLUSH_SECONDS="1")
    producer.join()
    stack.wait_until_committed(len(events), timeout=900)
    return at_kill


@pytest.mark.parametrize("restart_with", ["same-datadir", "fresh-datadir"])
def test_sigkill_mid_stream_loses_and_duplicates_nothing(stack, restart_with):
    events = list(PaymentGenerator(load_scenario(), seed=33, invalid_ratio=0.03, start=START)
                  .events(60_000))
    at_kill = kill_and_restart(stack, events, 3, rate=1500, seed=7,
                               fresh_datadir=restart_with == "fresh-datadir")
    assert all(0 < n < len(events) for n in at_kill), f"a kill missed the stream: {at_kill}"
    assert_end_state(stack, events)
