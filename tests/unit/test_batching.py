"""The batch path's offset bookkeeping: offsets with no record are marked done."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from app.batching import BatchConsumer, offset_gaps


@pytest.mark.parametrize(("expected", "offsets", "gaps"), [
    (0, [0, 1, 2], []),
    (3, [5, 6, 9, 12], [(3, 4), (7, 8), (10, 11)]),  # from the expected offset on
    (10, [10, 20], [(11, 19)]),  # a compacted stretch
    (7, [8], [(7, 7)]),  # a transaction marker at the expected offset
])
def test_offset_gaps(expected, offsets, gaps):
    assert offset_gaps(expected, offsets) == gaps


def test_a_batch_with_holes_records_each_gap_with_the_consumer():
    consumer = object.__new__(BatchConsumer)  # only the gap bookkeeping is exercised
    recorded: list[tuple] = []

    async def add_gap(tp, first, last):
        recorded.append((tp, first, last))

    consumer._add_gap = add_gap
    tp = TP("payments", 2)
    batch = [SimpleNamespace(offset=o) for o in (4, 5, 8)]
    asyncio.run(consumer._record_gaps(tp, 2, batch))
    assert recorded == [(tp, 2, 3), (tp, 6, 7)]


def test_records_lost_by_the_kafka_client_in_a_rebalance_are_read_again():
    consumer = object.__new__(BatchConsumer)
    tp = TP("payments", 3)
    answers = [KeyError(tp), ({tp: ["r"]}, {tp})]
    seeks: list[str] = []

    async def wait_next_records(timeout):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def perform_seek():
        seeks.append("to committed")

    consumer._wait_next_records = wait_next_records
    consumer.perform_seek = perform_seek
    assert asyncio.run(consumer._next_records()) == ({}, None)
    assert seeks == ["to committed"]  # what the client skipped is fetched again
    assert asyncio.run(consumer._next_records()) == ({tp: ["r"]}, {tp})


def test_other_key_errors_still_end_the_worker():
    consumer = object.__new__(BatchConsumer)

    async def wait_next_records(timeout):
        raise KeyError("not a partition")

    consumer._wait_next_records = wait_next_records
    with pytest.raises(KeyError):
        asyncio.run(consumer._next_records())
