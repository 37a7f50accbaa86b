"""The dedupe window's expiry on a running worker: the timer purges expired ids a chunk
per turn of the event loop while payments keep flowing, and nothing is lost or counted
twice (PostgreSQL's claims, not the ids held in the table, decide duplicates)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import assert_end_state, send


def expired(worker) -> int:
    return int(worker.stats()["dedupe"]["ids_expired"])


def test_expired_ids_are_purged_while_payments_flow_and_the_end_state_is_exact(stack):
    events = list(PaymentGenerator(load_scenario(), seed=84, invalid_ratio=0.03,
                                   start=datetime(2026, 11, 1, 10, 0, tzinfo=UTC))
                  .events(30_000))
    worker = stack.start_worker("w1", DEDUPE_WINDOW_S="2", DEDUPE_PURGE_INTERVAL_S="1",
                                PARQUET_FLUSH_SECONDS="1")
    send(stack, events[:15_000])
    deadline = time.monotonic() + 120
    while not expired(worker):  # the first ids expire and are purged ...
        assert time.monotonic() < deadline, "no id was purged"
        time.sleep(0.5)
    send(stack, events[15_000:])  # ... and payments keep coming
    stack.wait_until_committed(len(events), timeout=240)
    accepted = worker.stats()["ingest"]["accepted"]
    deadline = time.monotonic() + 120
    while expired(worker) < accepted:  # in the end every accepted id expires
        assert time.monotonic() < deadline, f"{expired(worker)} of {accepted} ids purged"
        time.sleep(0.5)
    assert expired(worker) == accepted
    assert_end_state(stack, events)
