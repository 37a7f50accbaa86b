"""A second worker joins: partitions move, nothing is lost or counted twice.

The second worker joins while the first is caught up. noida-db's group coordinator can
wedge when a member is asked to rejoin in the middle of committing (its commits get
UnknownMemberId, and then no generation completes); Kafka does not, but this test must
be deterministic on the broker CI has.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import assert_end_state, send

START = datetime(2026, 11, 1, 11, 58, tzinfo=UTC)


def test_second_worker_joins_and_shares_the_partitions(stack):
    events = list(PaymentGenerator(load_scenario(), seed=44, invalid_ratio=0.03, start=START)
                  .events(30_000))
    first = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="1")
    send(stack, events[:15_000])
    stack.wait_until_committed(15_000, timeout=120)

    second = stack.start_worker("w2", PARQUET_FLUSH_SECONDS="1")
    deadline = time.monotonic() + 90
    while not second.stats()["assigned"]:  # joined and rebalanced
        assert time.monotonic() < deadline, "the second worker was never assigned a partition"
        time.sleep(0.5)
    owned = [{tp for tp in w.stats()["assigned"] if tp.startswith("payments[")}
             for w in (first, second)]
    assert owned[0] and owned[1] and not owned[0] & owned[1], owned
    assert owned[0] | owned[1] == {f"payments[{p}]" for p in range(stack.partitions)}, owned
    send(stack, events[15_000:], rate=3000)
    stack.wait_until_committed(len(events), timeout=240)
    assert_end_state(stack, events)
    assert second.stats()["ingest"]["consumed"] > 0, "the second worker got no partition"
    assert first.stats()["ingest"]["consumed"] >= 15_000
