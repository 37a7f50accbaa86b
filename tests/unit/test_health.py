"""The lag the probes and /metrics report: the broker's end offsets, the consumer's fetch
state when the broker does not answer, and unknown when neither knows a partition."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP

from app.health import Health
from runtime.topics import PAYMENTS

P0, P1 = TP(PAYMENTS, 0), TP(PAYMENTS, 1)


class Consumer:
    def __init__(self, fetched: dict, committed: dict) -> None:
        self.fetched = fetched
        self._committed_offset = committed

    def assignment(self) -> set:
        return {P0, P1, TP("payments-config", 0)}  # only payments partitions count

    def highwater(self, tp: TP) -> int | None:
        return self.fetched.get(tp)


def health(consumer: Consumer, end_offsets) -> Health:
    app = SimpleNamespace(consumer=consumer)
    return Health(app, None, None, None, None, None, None, end_offsets)  # type: ignore[arg-type]


def broker(ends: dict):
    async def ask(partitions):
        return {tp: ends[tp] for tp in partitions}
    return ask


async def unreachable(partitions):
    raise TimeoutError


def lag(h: Health):
    return asyncio.run(h.lag())


def test_the_broker_end_counts_when_the_fetch_state_has_fallen_behind():
    """A held-up worker stops fetching: its last high watermark is not the log end."""
    consumer = Consumer(fetched={P0: 8000, P1: 4000}, committed={P0: 5000, P1: 4000})
    assert lag(health(consumer, broker({P0: 21000, P1: 4500}))) == {P0: 16000, P1: 500}


def test_a_fetch_newer_than_the_broker_answer_wins():
    consumer = Consumer(fetched={P0: 120, P1: 10}, committed={P0: 100, P1: 10})
    assert lag(health(consumer, broker({P0: 110, P1: 10}))) == {P0: 20, P1: 0}


def test_the_fetch_state_stands_in_when_the_broker_does_not_answer():
    consumer = Consumer(fetched={P0: 120, P1: 10}, committed={P0: 100})
    assert lag(health(consumer, unreachable)) == {P0: 20, P1: 10}


def test_unknown_when_the_broker_does_not_answer_for_a_partition_never_fetched():
    consumer = Consumer(fetched={P0: 5}, committed={})
    assert lag(health(consumer, unreachable)) is None


def test_a_broker_that_does_not_answer_is_logged_once_per_outage(caplog):
    consumer = Consumer(fetched={P0: 5, P1: 5}, committed={})
    h = health(consumer, unreachable)
    with caplog.at_level("INFO", logger="app.health"):
        lag(h), lag(h), lag(h)
        h.end_offsets = broker({P0: 5, P1: 5})
        lag(h)
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO"]
    assert "TimeoutError" in caplog.records[0].getMessage()


def test_the_assignment_is_empty_before_the_consumer_thread_starts():
    """The web server answers before the consumer's thread has started: the stats view
    and the leader check then see no partitions instead of failing with a 500."""
    from types import SimpleNamespace

    from faust.exceptions import ConsumerNotStarted
    from faust.types import TP

    from runtime.faust_app import PaymentApp

    class NotStarted:
        def assignment(self) -> set:
            raise ConsumerNotStarted("Consumer thread not yet started")

    class Started:
        def assignment(self) -> set:
            return {TP("payments", 0)}

    assert PaymentApp.assigned_partitions(SimpleNamespace(consumer=NotStarted())) == set()
    assert PaymentApp.assigned_partitions(SimpleNamespace(consumer=Started())) == {
        TP("payments", 0)}
