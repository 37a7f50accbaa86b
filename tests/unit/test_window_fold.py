"""Windowed metrics folded a few batches at a time (``WINDOW_FOLD_EVENTS``) give the
window values that folding each batch as it comes gives: through the ingest handler, on
generated traffic with bad messages, late events, disorder and redeliveries."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from faust.types import TP
from faust.types.tuples import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.generator import PaymentGenerator, load_scenario
from tables.context import placeholder_message
from tables.payments import WindowState, metrics_table
from tests.helpers import RecordingSink, ingest_rig

PARTITIONS = 2
EVENTS = list(PaymentGenerator(load_scenario(), seed=21, invalid_ratio=0.05).events(600))
STAMP = time.time()  # every message's broker timestamp: after every event's time


def worker(tmp: Any, fold_events: int) -> tuple[Any, Any, WindowState]:
    """A memory-store app with the ingest handler, its window state folding at
    ``fold_events``."""
    rig = ingest_rig(tmp, RecordingSink(), partitions=PARTITIONS, fold_events=fold_events)
    return rig.app, rig.handler, rig.state


def message(partition: int, offset: int) -> Message:
    e = EVENTS[offset]
    return Message("payments", partition, offset, STAMP, 0, None, e.key, e.value, None,
                   tp=TP("payments", partition))


@st.composite
def deliveries(draw: Any) -> list[tuple[int, int, int]]:
    """``(partition, first offset, end offset)`` of each batch a worker is handed: each
    partition's offsets in order, in batches of 1-60, now and then from an earlier offset
    again (the broker delivers a range again after a seek)."""
    out: list[tuple[int, int, int]] = []
    position = [0] * PARTITIONS
    for _ in range(draw(st.integers(5, 40))):
        partition = draw(st.integers(0, PARTITIONS - 1))
        first = position[partition]
        if first and draw(st.integers(0, 9)) == 0:
            first = draw(st.integers(0, first - 1))  # delivered again
        end = min(first + draw(st.integers(1, 60)), len(EVENTS))
        if first >= end:
            continue
        out.append((partition, first, end))
        position[partition] = max(position[partition], end)
    return out


def same_value(a: Any, b: Any) -> bool:
    """Two stored window values alike: every number equal, but the float sums of the
    windowed metrics (a batch's values add up, then the batch's sum to the window's, so
    how batches group decides how the additions group) equal to 1e-9."""
    if not (isinstance(a, dict) and "m" in a):
        return a == b
    if a["last_offset"] != b["last_offset"] or a["b"] != b["b"] or a["m"].keys() != b["m"].keys():
        return False
    for key, (counts, count, total, low, high) in a["m"].items():
        other = b["m"][key]
        if [counts, count, low, high] != [other[0], other[1], other[3], other[4]]:
            return False
        if type(total) is not type(other[2]):
            return False
        if total != other[2] and not (isinstance(total, float)
                                      and math.isclose(total, other[2], rel_tol=1e-9)):
            return False
    return True


def tables(app: Any) -> dict[str, dict[str, Any]]:
    return {name: dict(table.data) for name, table in app.tables.items()
            if name.startswith(("window-", "stream-clock"))}


def differences(tmp: Any, batches: list[tuple[int, int, int]], fold_events: int,
                read_between: bool = False, sabotage: Any = None) -> list[tuple[str, str]]:
    """``(table, key)`` of the window values (and clocks) that differ between a worker
    folding each batch and one folding at ``fold_events``, after both were handed
    ``batches`` and flushed; with ``read_between``, a reader reads the folding one's
    metric values now and then, and they must match too."""
    each_app, each, each_state = worker(tmp / "each", 1)
    fold_app, fold, fold_state = worker(tmp / "fold", fold_events)
    if sabotage is not None:
        sabotage(fold_state)

    async def run() -> None:
        for k, (partition, first, end) in enumerate(batches):
            batch = [message(partition, offset) for offset in range(first, end)]
            tp = TP("payments", partition)
            await each(tp, batch)
            await fold(tp, batch)
            if read_between and k % 3 == 2:  # a reader sees the batches waiting
                name = metrics_table(300)
                now, want = dict(fold_state.items(name)), dict(each_state.items(name))
                assert now.keys() == want.keys()
                assert all(same_value(value, want[key]) for key, value in now.items())
        for partition in range(PARTITIONS):
            last = placeholder_message("payments", partition)
            each_state.flush(partition, last)
            fold_state.flush(partition, last)

    asyncio.run(run())
    want, got = tables(each_app), tables(fold_app)
    assert any(want[metrics_table(300)].values())
    out = []
    for name in want:
        out += [(name, key) for key in want[name].keys() | got[name].keys()
                if key not in want[name] or key not in got[name]
                or not same_value(want[name][key], got[name][key])]
    return out


@settings(max_examples=25, deadline=None)
@given(deliveries(), st.integers(2, 400), st.booleans())
def test_folding_batches_together_gives_the_values_of_folding_each(tmp_path_factory, batches,
                                                                    fold_events, read_between):
    assert differences(tmp_path_factory.mktemp("run"), batches, fold_events,
                       read_between) == []


def test_a_batch_delivered_again_is_not_folded_in_with_the_one_it_repeats(tmp_path):
    """Offsets 20-49 come twice: the second time they wait with the first (1,000 to a
    fold). Folded together they would count twice, a fold's watermark check seeing
    one batch starting at 0; so what waits is folded before the repeat joins."""
    batches = [(0, 0, 50), (0, 20, 70)]
    assert differences(tmp_path / "right", batches, 1000) == []

    def forget_the_last_offset(state: WindowState) -> None:
        defer = state._defer

        def and_forget(partition: int, first_offset: int, batch: Any) -> None:
            defer(partition, first_offset, batch)
            waiting = state._waiting.get(partition)
            if waiting is not None:
                waiting.last_offset = -1  # every batch looks new

        state._defer = and_forget

    wrong = differences(tmp_path / "wrong", batches, 1000, sabotage=forget_the_last_offset)
    assert {name for name, _ in wrong} == {metrics_table(300), metrics_table(3600)}


def test_a_revoked_partition_drops_its_waiting_batches(tmp_path):
    """A revocation forgets the batches waiting with the cache: the partition's next
    owner counts them from the last commit, so this worker must not write them."""
    app, handler, state = worker(tmp_path, 1000)
    batch = [message(1, offset) for offset in range(40)]

    async def run() -> None:
        await handler(TP("payments", 1), batch)
        state.forget(1)
        state.flush(1, batch[-1])

    asyncio.run(run())
    assert not app.tables[metrics_table(300)].data
    assert not dict(state.items(metrics_table(300)))
