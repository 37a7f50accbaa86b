"""PostgreSQL away for a while: the worker waits, acks nothing unstored, loses nothing."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime

from simulator.generator import PaymentGenerator, load_scenario
from tests.e2e.conftest import assert_end_state
from tests.e2e.test_pipeline import send
from tests.proxy import proxy_database


def send_until_first_commit(stack, events) -> threading.Thread:
    """Send ``events`` at 1,500/s in the background; return once an offset is committed."""
    sender = threading.Thread(target=send, args=(stack, events), kwargs={"rate": 1500})
    sender.start()
    deadline = time.monotonic() + 60
    while stack.committed_and_end()[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return sender


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


def postgres_restart_mid_stream(tmp_path, events, *, down_s: float, retry_s: int) -> None:
    """A real restart of a server of our own (embedded, so the machine's is untouched):
    fast shutdown mid-stream, down for ``down_s``, started again on the same data; no
    offset is committed meanwhile, and the end state is exact."""
    import uuid

    from devtools.services import start_embedded_postgres
    from devtools.stack import Stack

    pg = start_embedded_postgres(tmp_path / "pg")
    stack = Stack.start(tmp_path / "stack", pg, f"pm_restart_{uuid.uuid4().hex[:6]}")
    try:
        worker = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="1",
                                    DB_RETRY_SECONDS=str(retry_s))
        sender = send_until_first_commit(stack, events)
        pg.stop()  # SIGINT: fast shutdown, every connection is closed by the server
        committed_at_stop = stack.committed_and_end()[0]
        time.sleep(down_s)
        assert worker.alive(), "the worker gave up within its retry budget"
        assert stack.committed_and_end()[0] == committed_at_stop, \
            "offsets were committed while PostgreSQL was down"
        restarted = start_embedded_postgres(tmp_path / "pg")  # same data directory
        assert restarted.server_url == pg.server_url
        pg.embedded_pid = restarted.embedded_pid
        sender.join()
        stack.wait_until_committed(len(events), timeout=600)
        assert worker.alive()
        assert 0 < committed_at_stop < len(events), "the restart did not land mid-stream"
        assert_end_state(stack, events)
    finally:
        stack.stop(drop_database=True)
        pg.stop()


def test_a_postgres_restart_mid_stream_loses_nothing(tmp_path):
    events = list(PaymentGenerator(load_scenario(), seed=72, invalid_ratio=0.05,
                                   start=datetime(2026, 11, 1, 9, 0, tzinfo=UTC))
                  .events(10_000))
    postgres_restart_mid_stream(tmp_path, events, down_s=4, retry_s=120)
