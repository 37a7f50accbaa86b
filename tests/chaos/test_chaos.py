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

from datetime import UTC, datetime

import pytest

from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import assert_end_state, kill_and_restart, postgres_restart_mid_stream

START = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)


@pytest.mark.timeout(2400)
def test_ten_sigkills_across_500k_events(stack):
    events = list(PaymentGenerator(load_scenario(), seed=91, invalid_ratio=0.02, start=START)
                  .events(500_000))
    # Each restart rejoins after the dead member's 10 s session, and its first commit
    # takes the backlog (rate x ~10 s): at 3,000/s the ten kills fit in the stream.
    at_kill = kill_and_restart(stack, events, 10, rate=3000, seed=91, gap=(15_000, 30_000))
    print(f"committed offsets at the 10 kills: {at_kill}")
    assert len(at_kill) == 10 and all(0 < n < len(events) for n in at_kill), at_kill
    assert_end_state(stack, events)


@pytest.mark.timeout(1200)
def test_postgres_down_for_60_seconds(tmp_path):
    events = list(PaymentGenerator(load_scenario(), seed=92, invalid_ratio=0.03,
                                   start=START).events(150_000))
    postgres_restart_mid_stream(tmp_path, events, down_s=60, retry_s=300)
