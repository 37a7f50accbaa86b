"""The ingest batch handler without a broker: a memory-store app, messages built by hand."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
from faust.types import TP
from faust.types.tuples import Message

from agents.ingest import register_ingest
from app.faust_app import create_app
from app.settings import Settings
from app.topics import declare_topics
from simulator.generator import PaymentGenerator, load_scenario
from tables.cache import WindowCache
from tables.payments import declare_tables
from tests.helpers import expected_windows


class RecordingSink:
    """Stands in for SinkService: keeps what the handler hands over."""

    def __init__(self) -> None:
        self.batches: list = []

    async def put(self, batch) -> None:
        self.batches.append(batch)


@pytest.fixture
def handler_setup(tmp_path):
    app = create_app(Settings(store_url="memory://", app_datadir=str(tmp_path),
                              broker_url="kafka://127.0.0.1:1"))
    payments, dlq = declare_topics(app)
    sent: list = []
    dlq.send_soon = lambda **kw: sent.append(kw)  # no broker: record DLQ records instead
    cache = WindowCache(app, declare_tables(app))
    sink = RecordingSink()
    stats = register_ingest(app, payments, dlq, cache, sink)
    return app, app.batch_handlers["payments"], cache, sink, stats, sent


def messages(events, partition: int, first: int = 0) -> list[Message]:
    return [Message("payments", partition, first + i, 1_700_000_000.0, 0, None, e.key,
                    e.value, None, tp=TP("payments", partition))
            for i, e in enumerate(events)]


def test_handler_counts_windows_and_dead_letters(handler_setup):
    app, handler, cache, sink, stats, sent = handler_setup
    events = list(PaymentGenerator(load_scenario(), seed=8, invalid_ratio=0.1,
                                   start=datetime(2026, 5, 1, 9, 59, tzinfo=UTC)).events(400))

    async def run() -> None:
        await handler(TP("payments", 0), messages(events[:250], 0))
        await handler(TP("payments", 0), messages(events[250:], 0, first=250))

    asyncio.run(run())
    invalid = [i for i, e in enumerate(events) if e.kind != "valid"]
    assert stats.consumed == 400 and stats.failed == len(invalid)
    assert [f["key"] for f in sent] == [f"payments-0-{i}".encode() for i in invalid]
    # the last window row of each key holds the absolute count after both batches
    final = {}
    for batch in sink.batches:
        for row in batch.window_rows:
            final[(row.window_seconds, row.window_start, row.channel)] = row.counts
    for size in (300, 3600):
        want = expected_windows(events, size)
        got = {(datetime.fromtimestamp(k[1], UTC), k[2]): v.tx_count
               for k, v in final.items() if k[0] == size}
        assert got == {k: c["tx_count"] for k, c in want.items()}


def test_redelivered_batch_is_not_counted_again(handler_setup):
    app, handler, cache, sink, stats, _ = handler_setup
    events = list(PaymentGenerator(load_scenario(), seed=9).events(100))
    batch = messages(events, 1)

    async def run() -> None:
        await handler(TP("payments", 1), batch)
        await handler(TP("payments", 1), batch)  # the broker delivers it again

    asyncio.run(run())
    first, second = sink.batches
    assert [r.counts for r in first.window_rows] == [r.counts for r in second.window_rows]
    assert sum(r.counts.tx_count for r in second.window_rows if r.window_seconds == 3600) == 100
