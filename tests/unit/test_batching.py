"""The batch path's offsets: a handler is given each partition's records contiguously
from its committed offset, whatever a fetch brings back around a seek or a rebalance."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import pytest
from aiokafka.structs import ConsumerRecord
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP

from models.records import Record
from runtime.batching import BatchConsumer, Positions
from runtime.faust_app import create_app
from runtime.settings import Settings

TP3 = TP("payments", 3)


def records(first: int, last: int, tp: TP = TP3) -> list[ConsumerRecord]:
    """The Kafka client's records of ``tp`` at offsets ``first`` to ``last``."""
    return [ConsumerRecord(tp.topic, tp.partition, o, 1_733_390_000_000 + o, 0, b"k%d" % o,
                           b"v%d" % o, None, 2, 2, [("h", b"%d" % o)])
            for o in range(first, last + 1)]


def consumer(fetches: list, *, handler=None) -> tuple[BatchConsumer, list, list]:
    """A BatchConsumer whose fetches are ``fetches`` (dicts of tp -> records, or
    callables returning one); returns it, the batches handled and the seeks."""
    c = object.__new__(BatchConsumer)
    handled: list[tuple[int, int]] = []
    seeks: list[tuple[TP, int]] = []
    stopped = asyncio.Event()

    async def take(tp, messages):
        handled.append((messages[0].offset, messages[-1].offset))
        return True

    async def next_records():
        if not fetches:
            stopped.set()
            return {}, None
        fetch = fetches.pop(0)
        fetch = fetch() if callable(fetch) else fetch
        return fetch, set(fetch)

    async def seek(tp, offset):
        seeks.append((tp, offset))

    async def call_thread(fun, *args):
        return fun(*args)

    c.app = SimpleNamespace(batch_handlers={"payments": handler or take}, empty_fetch_pause=0,
                            consumer_generation_id=1, last_fetch_at=None, last_batch_at=None,
                            monitor=SimpleNamespace(track_tp_end_offset=lambda tp, end: None))
    c.positions = Positions()
    c.passed_over = Counter()
    c.diag = SimpleNamespace(set_flag=lambda flag: None)
    c.callback = None
    c._stopped = stopped
    c._crashed = asyncio.Event()
    c._buffered_partitions = set()
    c.flow_active = True
    c.highwater = lambda tp: 0
    c._next_records = next_records
    c.seek = seek
    c._thread = SimpleNamespace(call_thread=call_thread)
    c._client_positions = lambda tps: {}  # the Kafka client's positions: none known
    return c, handled, seeks


def drain(c: BatchConsumer) -> None:
    asyncio.run(c._drain_messages(SimpleNamespace(_stopped=asyncio.Event())))


def test_records_fetched_before_a_seek_back_are_refused_and_read_again():
    """The loss the acked list used to hide (ADR 0010): after a takeover the partition is
    sought back to its committed offset, and a fetch from before the seek brings records
    past it. Taken, the commit after them would pass over 8,676-9,845."""
    c, handled, seeks = consumer([{TP3: records(9846, 9900)}, {TP3: records(8676, 9000)},
                                  {TP3: records(9001, 9900)}])
    c.positions.start(TP3, 8676)
    drain(c)
    assert seeks == [(TP3, 8676)]
    assert handled == [(8676, 9000), (9001, 9900)]
    assert c.positions.next(TP3) == 9901


def test_records_already_taken_are_dropped_from_an_overlapping_fetch():
    c, handled, seeks = consumer([{TP3: records(0, 9)}, {TP3: records(5, 14)}])
    c.positions.start(TP3, 0)
    drain(c)
    assert handled == [(0, 9), (10, 14)] and seeks == []


def test_offsets_the_broker_has_no_record_for_do_not_stop_the_partition():
    """A transaction marker or a compacted stretch at the position: the batch is refused
    once, and when the read from the position starts at the same offset it is taken."""
    c, handled, seeks = consumer([{TP3: records(12, 20)}, {TP3: records(12, 20)},
                                  {TP3: records(21, 22)}])
    c.positions.start(TP3, 10)
    drain(c)
    assert seeks == [(TP3, 10)]
    assert handled == [(12, 20), (21, 22)]


def test_a_partition_not_sought_since_its_assignment_is_not_handled():
    c, handled, _ = consumer([{TP3: records(0, 5)}])
    drain(c)
    assert handled == []
    assert c.passed_over["3: no position"] == 1  # what the liveness probe shows


def test_a_dropped_batch_is_read_again_from_the_same_position():
    answers = [False, True]

    async def handler(tp, messages):
        handled.append((messages[0].offset, messages[-1].offset))
        return answers.pop(0)

    c, handled, seeks = consumer([{TP3: records(0, 4)}, {TP3: records(0, 4)}], handler=handler)
    c.positions.start(TP3, 0)
    drain(c)
    assert handled == [(0, 4), (0, 4)] and seeks == [(TP3, 0)]
    assert c.positions.next(TP3) == 5


def test_a_batch_handled_across_a_rebalance_does_not_move_the_new_position():
    async def handler(tp, messages):
        c.positions.forget(tp)  # revoked while the handler waited ...
        c.positions.start(tp, 100)  # ... assigned again and sought to its commit
        return True

    c, _, seeks = consumer([{TP3: records(100, 150)}], handler=handler)
    c.positions.start(TP3, 100)
    drain(c)
    assert c.positions.next(TP3) == 100 and seeks == []


def test_positions_versions_and_gaps():
    p = Positions()
    p.start(TP3, 7)
    v = p.version(TP3)
    assert p.advance(TP3, v, 9) and p.next(TP3) == 9
    assert not p.confirms_gap(TP3, 12)  # first seen: refused
    assert not p.confirms_gap(TP3, 11)  # another start: a new suspicion
    assert p.confirms_gap(TP3, 11)
    p.forget(TP3)
    assert p.next(TP3) is None and not p.advance(TP3, v, 20)
    assert p.owned() == set()


def test_perform_seek_starts_every_partition_at_its_commit_or_its_beginning():
    c = object.__new__(BatchConsumer)
    tps = [TP("payments", i) for i in range(3)]
    seeks: list[tuple[int, int]] = []

    async def seek_to_committed():
        return {tps[0]: 40, tps[1]: None, tps[2]: 70}

    async def earliest_offsets(*asked):
        assert list(asked) == [tps[1]]
        return {tps[1]: 5}

    async def seek(tp, offset):
        seeks.append((tp.partition, offset))

    c.app = SimpleNamespace(batch_handlers={"payments": None})
    c.positions = Positions()
    c.positions.start(tps[2], 90)  # owned since its last seek: back to its own position
    c._committed_offset = {}
    c.assignment = lambda: set(tps) | {TP("changelog", 0)}
    c.seek_to_committed = seek_to_committed
    c.earliest_offsets = earliest_offsets
    c.seek = seek
    asyncio.run(c.perform_seek())
    assert sorted(seeks) == [(1, 5), (2, 90)]
    assert [c.positions.next(tp) for tp in tps] == [40, 5, 90]


@pytest.mark.parametrize(("committed", "offset", "asked"), [
    (None, 10, True), (5, 10, True), (10, 10, False), (12, 10, False)])
def test_commit_durable_only_moves_forward(committed, offset, asked):
    c = object.__new__(BatchConsumer)
    commits: list = []

    async def commit_offsets(offsets):
        commits.append(offsets)
        return True

    c._committed_offset = {TP3: committed} if committed is not None else {}
    c._commit_offsets = commit_offsets
    assert asyncio.run(c.commit_durable(TP3, offset))
    assert commits == ([{TP3: offset}] if asked else [])


def test_records_lost_by_the_kafka_client_in_a_rebalance_are_read_again():
    c = object.__new__(BatchConsumer)
    answers = [KeyError(TP3), ({TP3: ["r"]}, {TP3})]
    seeks: list[str] = []

    async def wait_next_records(timeout):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def perform_seek():
        seeks.append("to positions")

    c._wait_next_records = wait_next_records
    c.perform_seek = perform_seek
    assert asyncio.run(c._next_records()) == ({}, None)
    assert seeks == ["to positions"]  # what the client skipped is fetched again
    assert asyncio.run(c._next_records()) == ({TP3: ["r"]}, {TP3})


def test_other_key_errors_still_end_the_worker():
    c = object.__new__(BatchConsumer)

    async def wait_next_records(timeout):
        raise KeyError("not a partition")

    c._wait_next_records = wait_next_records
    with pytest.raises(KeyError):
        asyncio.run(c._next_records())


def test_records_the_client_handed_over_but_no_batch_took_are_read_again(monkeypatch):
    """The stall of the fresh-clone CI runs: the client's position for a partition moved
    past records that never became a batch, and no later record arrived to show the gap.
    Compared between fetches, the partition is sought back; the same gap seen again (the
    broker has no record in between) is left alone."""
    monkeypatch.setattr("runtime.batching.REALIGN_INTERVAL_S", 0)
    client = {TP3: 5143}

    def fetch_after_the_seek():
        assert seeks == [(TP3, 3836)]
        client[TP3] = 3836  # the seek moved the client back ...
        return {TP3: records(3836, 5142)}  # ... and it fetches the lost records again

    c, handled, seeks = consumer([{}, fetch_after_the_seek, {}, {}])
    c._client_positions = lambda tps: {tp: client.get(tp) for tp in tps}
    c.positions.start(TP3, 3836)
    drain(c)
    assert handled == [(3836, 5142)]
    assert c.passed_over["3: client past its position"] == 0  # cleared by the batch
    assert seeks == [(TP3, 3836)]


def test_a_gap_the_broker_has_no_record_for_is_sought_back_once(monkeypatch):
    monkeypatch.setattr("runtime.batching.REALIGN_INTERVAL_S", 0)
    c, handled, seeks = consumer([{}, {}, {}])
    c._client_positions = lambda tps: dict.fromkeys(tps, 101)  # a marker at 100, at the end
    c.positions.start(TP3, 100)
    drain(c)
    assert seeks == [(TP3, 100)] and handled == []
    assert c.positions.next(TP3) == 100


def test_seeks_run_in_the_consumer_thread():
    """aiokafka's seek resolves futures of the consumer thread's loop: Faust's call from
    the main thread raced the fetcher, which could undo it."""
    calls = []

    class Thread:
        def seek(self, tp, offset):
            calls.append(("seek", tp, offset))

        async def call_thread(self, fun, *args):
            calls.append("in the consumer thread")
            return fun(*args)

    c = object.__new__(BatchConsumer)
    c._thread = Thread()
    asyncio.run(c._seek(TP3, 42))
    assert calls == ["in the consumer thread", ("seek", TP3, 42)]


@pytest.mark.parametrize("stopping", [True, False])
def test_a_cancel_ends_the_drain_loop_quietly_only_when_the_worker_stops(stopping):
    """Faust's fetcher took a SIGTERM during a rebalance for a rebalance restart, crashed
    the app and the worker exited 1 (a rolling restart in fresh-clone CI)."""
    c, handled, _ = consumer([])
    fetcher = SimpleNamespace(_stopped=asyncio.Event())

    async def cancelled_while_fetching():
        if stopping:
            fetcher._stopped.set()  # as Service.stop does before it cancels the task
        raise asyncio.CancelledError

    c._next_records = cancelled_while_fetching
    if stopping:
        asyncio.run(c._drain_messages(fetcher))
    else:
        with pytest.raises(asyncio.CancelledError):
            asyncio.run(c._drain_messages(fetcher))
    assert handled == []


def test_a_fetch_is_prepared_once_before_its_partitions_are_handled():
    """The preparer sees every batch of the fetch (the lists the handler is then given),
    once, before the first handler; a partition sought meanwhile is not handled."""
    tp1, tp2 = TP("payments", 1), TP("payments", 2)
    seen: list = []

    async def handler(tp, messages):
        seen.append(("handle", tp.partition, messages))
        return True

    c, _, _ = consumer([{tp1: records(0, 4, tp1), tp2: records(10, 12, tp2), TP3: records(7, 8)}],
                       handler=handler)

    async def prepare(batches):
        seen.append(("prepare", [(tp.partition, m) for tp, m in batches]))
        c.positions.start(TP3, 0)  # a seek while it waits: TP3's batch no longer fits

    c.app.batch_preparers = {"payments": prepare}
    for tp, first in ((tp1, 0), (tp2, 10), (TP3, 7)):
        c.positions.start(tp, first)
    drain(c)
    (_, prepared), *handled = seen
    assert [p for p, _ in prepared] == [1, 2, 3]
    assert [(p, m) for _, p, m in handled] == prepared[:2]
    assert all(m is n for (_, _, m), (_, n) in zip(handled, prepared, strict=False))
    assert c.positions.next(tp1) == 5 and c.positions.next(tp2) == 13
    assert c.positions.next(TP3) == 0  # not moved past a batch it never took


def test_the_worker_consumer_waits_for_a_fetch_as_the_settings_say(tmp_path):
    """Faust fixes fetch.max.wait.ms at 1.5 s and leaves fetch.min.bytes at 1; the
    consumer it hands the fetcher carries FETCH_MIN_BYTES and FETCH_MAX_WAIT_MS."""

    async def created() -> tuple[int, int]:
        app = create_app(Settings(store_url="memory://", app_datadir=str(tmp_path),
                                  broker_url="kafka://127.0.0.1:1", fetch_min_bytes=1234,
                                  fetch_max_wait_ms=77))
        client = app.consumer._thread._create_worker_consumer(app.transport)
        return client._fetch_min_bytes, client._fetch_max_wait_ms

    assert asyncio.run(created()) == (1234, 77)


def test_a_handler_gets_what_faust_would_make_of_each_record():
    """A batch handler's records (made in C) hold what Faust's per-message ``Message``
    holds under the same names, a record without a timestamp or key included: the
    handlers and Faust's tables read those."""
    got: list = []

    async def handler(tp, messages):
        got.extend(messages)
        return True

    fetched = [*records(5, 7), ConsumerRecord("payments", 3, 8, None, -1, None, None, None,
                                              0, 0, [])]
    c, _, _ = consumer([{TP3: fetched}], handler=handler)
    c.positions.start(TP3, 5)
    drain(c)
    assert len(got) == len(fetched)
    for record, message in zip(fetched, got, strict=True):
        expected = FaustConsumer._to_message(SimpleNamespace(app=c.app), TP3, record)
        for name in Record.__struct_fields__:
            assert getattr(message, name) == getattr(expected, name), name
