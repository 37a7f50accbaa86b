"""A worker process fed by the simulator: exactly once, windows exact."""

from __future__ import annotations

from datetime import UTC, datetime

from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import assert_end_state, send

START = datetime(2026, 11, 1, 9, 58, tzinfo=UTC)


def test_every_event_once_and_windows_exact(stack):
    scenario = load_scenario()
    scenario["late_event_ratio"] = 0.05  # out-of-order events cross window boundaries
    events = list(PaymentGenerator(scenario, seed=21, invalid_ratio=0.05, start=START)
                  .events(30_000))
    worker = stack.start_worker(PARQUET_FLUSH_SECONDS="2")
    send(stack, events)
    stack.wait_until_committed(len(events), timeout=240)
    stats = worker.stats()
    assert stats["ingest"]["consumed"] == len(events)
    assert stats["ingest"]["failed"] == sum(e.kind != "valid" for e in events)
    assert stats["dedupe"]["ids_held"] == 0  # PostgreSQL's claims decide, not memory
    # no customer histories either: the rules over a customer's payments are judged in
    # PostgreSQL (storage.customer_rules)
    assert stats["dedupe"]["customers_in_memory"] == 0
    assert_end_state(stack, events)
