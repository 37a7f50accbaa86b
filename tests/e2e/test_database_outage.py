"""PostgreSQL away for a while: the worker waits, acks nothing unstored, loses nothing."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import assert_end_state, postgres_restart_mid_stream, send_until_first_commit
from tests.proxy import proxy_database


def test_an_outage_shorter_than_the_retry_budget_loses_nothing(stack):
    events = list(PaymentGenerator(load_scenario(), seed=71, invalid_ratio=0.05,
                                   start=datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
                  .events(12_000))
    proxy, proxied_url = proxy_database(stack.database_url)
    try:
        worker = stack.start_worker("w1", DATABASE_URL=proxied_url,
                                    PARQUET_FLUSH_SECONDS="1", DB_RETRY_SECONDS="120")
        sender = send_until_first_commit(stack, events)

        proxy.cut()
        time.sleep(1)  # what was in flight settles
        committed_at_cut = stack.committed_and_end()[0]
        time.sleep(6)
        committed_during = stack.committed_and_end()[0]
        assert worker.alive()
        assert committed_during == committed_at_cut, "offsets advanced without the database"

        proxy.restore()
        sender.join()
        stack.wait_until_committed(len(events), timeout=180)
        assert worker.alive()
        assert 0 < committed_at_cut < len(events), "the outage did not land mid-stream"
        assert_end_state(stack, events)
    finally:
        proxy.close()


def test_a_postgres_restart_mid_stream_loses_nothing(tmp_path):
    events = list(PaymentGenerator(load_scenario(), seed=72, invalid_ratio=0.05,
                                   start=datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
                  .events(10_000))
    postgres_restart_mid_stream(tmp_path, events, down_s=4, retry_s=120)
