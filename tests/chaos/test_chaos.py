"""The long fault runs (``make test-chaos``; not part of ``make test``).

- (a) the worker SIGKILLed at 10 random points across 500,000 events, the broker
  never restarted: the group recovers after each session timeout;
- (d) PostgreSQL (an embedded server of the test's own) down for 60 s mid-stream.

Each ends with the exact end-state check of the end-to-end tests. The short
versions run in ``make test``: 3 kills (tests/e2e/test_crash.py), the broker
killed and one of two workers killed (tests/e2e/test_faults.py), PostgreSQL cut
for 7 s and restarted (tests/e2e/test_database_outage.py).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import pytest

from devtools.services import start_embedded_postgres
from devtools.stack import Stack
from simulator.generator import PaymentGenerator, load_scenario
from tests.e2e.conftest import assert_end_state
from tests.e2e.test_crash import kill_and_restart
from tests.e2e.test_database_outage import send_until_first_commit

START = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)


@pytest.mark.timeout(2400)
def test_ten_sigkills_across_500k_events(stack):
    events = list(PaymentGenerator(load_scenario(), seed=91, invalid_ratio=0.02, start=START)
                  .events(500_000))
    at_kill = kill_and_restart(stack, events, 10, rate=8000, seed=91, gap=(20_000, 45_000))
    print(f"committed offsets at the 10 kills: {at_kill}")
    assert len(at_kill) == 10 and all(0 < n < len(events) for n in at_kill), at_kill
    assert_end_state(stack, events)


@pytest.mark.timeout(1200)
def test_postgres_down_for_60_seconds(tmp_path):
    pg = start_embedded_postgres(tmp_path / "pg")
    stack = Stack.start(tmp_path / "stack", pg, f"pm_chaos_{uuid.uuid4().hex[:6]}")
    try:
        events = list(PaymentGenerator(load_scenario(), seed=92, invalid_ratio=0.03,
                                       start=START).events(150_000))
        worker = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="1", DB_RETRY_SECONDS="300")
        sender = send_until_first_commit(stack, events)
        pg.stop()
        committed_at_stop = stack.committed_and_end()[0]
        time.sleep(60)
        assert worker.alive(), "the worker gave up within its 300 s retry budget"
        assert stack.committed_and_end()[0] == committed_at_stop, \
            "offsets were committed while PostgreSQL was down"
        restarted = start_embedded_postgres(tmp_path / "pg")
        pg.embedded_pid = restarted.embedded_pid
        sender.join()
        stack.wait_until_committed(len(events), timeout=600)
        assert worker.alive()
        assert 0 < committed_at_stop < len(events), "the outage did not land mid-stream"
        assert_end_state(stack, events)
    finally:
        stack.stop(drop_database=True)
        pg.stop()
