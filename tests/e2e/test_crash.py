"""SIGKILL the worker mid-stream, again and again: the end state equals an uninterrupted run's.

After the kills the lake is compacted, and an engine the writer does not use (polars)
counts each produced event once, before and after. The broker is never restarted:
Kafka expires the dead member's session (``BROKER_SESSION_TIMEOUT_S``, 10 s in the
tests) and the restarted worker takes the partitions over from the last committed
offsets.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from simulator.generator import PaymentGenerator, load_scenario
from storage.compaction import compact
from storage.delta import RawTable
from tests.helpers import assert_end_state, kill_and_restart

START = datetime(2026, 11, 1, 10, 3, tzinfo=UTC)


@pytest.mark.parametrize("restart_with", ["same-datadir", "fresh-datadir"])
def test_sigkill_mid_stream_loses_and_duplicates_nothing(stack, restart_with):
    events = list(PaymentGenerator(load_scenario(), seed=33, invalid_ratio=0.03, start=START)
                  .events(60_000))
    at_kill = kill_and_restart(stack, events, 3, rate=1500, seed=7,
                               fresh_datadir=restart_with == "fresh-datadir")
    assert all(0 < n < len(events) for n in at_kill), f"a kill missed the stream: {at_kill}"
    assert_end_state(stack, events)
    # compacted (Delta optimize), polars still counts every produced event once
    report = compact(RawTable(str(stack.raw_dir)), before=datetime.now(UTC))
    assert report["removed"] > report["added"] > 0
    assert_end_state(stack, events)
