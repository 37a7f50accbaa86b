"""Event-time windows and the replay watermark."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.windows import WindowCounts, apply_entries, group_by_window, window_start
from simulator.generator import PaymentGenerator, load_scenario
from tests.helpers import parse


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_window_start_is_aligned_to_utc():
    assert window_start(ts("2026-11-22T10:04:59.999+00:00"), 300) == ts("2026-11-22T10:00:00+00:00")
    assert window_start(ts("2026-11-22T10:05:00+00:00"), 300) == ts("2026-11-22T10:05:00+00:00")
    assert window_start(ts("2026-11-22T10:59:59+00:00"), 3600) == ts("2026-11-22T10:00:00+00:00")


def test_group_by_window_uses_event_time_and_channel():
    gen = PaymentGenerator(load_scenario(), seed=3, start=datetime(2026, 1, 1, tzinfo=UTC))
    events = [(i, parse(e.value).transaction) for i, e in enumerate(gen.events(500))]
    groups = group_by_window(events, 300)
    assert sum(len(v) for v in groups.values()) == 500
    for (start, channel), entries in groups.items():
        for offset, _status, _amount in entries:
            p = events[offset][1]
            assert p.channel == channel
            assert start <= p.event_time.timestamp() < start + 300
        offsets = [e[0] for e in entries]
        assert offsets == sorted(offsets)


def test_replayed_entries_are_not_counted_twice():
    c = WindowCounts()
    assert apply_entries(c, [(0, "approved", 100), (1, "declined", 50)]) == 2
    assert apply_entries(c, [(0, "approved", 100), (1, "declined", 50), (2, "approved", 1)]) == 1
    assert (c.tx_count, c.amount_minor_sum, c.by_status, c.last_offset) == (
        3, 151, {"approved": 2, "declined": 1}, 2)
    assert WindowCounts.from_dict(c.to_dict()) == c


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["approved", "declined"]), st.integers(0, 10**6)),
                min_size=1, max_size=60),
       st.lists(st.tuples(st.integers(0, 100), st.integers(0, 100)), max_size=10))
def test_any_redelivery_pattern_converges(events, crashes):
    """Crashes that restart from any earlier offset give the counts of one clean pass."""
    entries = [(i, s, a) for i, (s, a) in enumerate(events)]
    n = len(entries)
    clean = WindowCounts()
    apply_entries(clean, entries)

    replayed = WindowCounts()
    position = 0
    for processed, restart in crashes:
        end = min(n, position + 1 + processed % n)
        apply_entries(replayed, entries[position:end])  # then the worker dies
        position = restart % end  # and resumes at an older committed offset
    apply_entries(replayed, entries[position:])
    assert replayed == clean


def test_copy_is_independent():
    c = WindowCounts(2, 10, {"approved": 2}, 5)
    snapshot = c.copy()
    c.add(6, "declined", 1)
    assert snapshot == WindowCounts(2, 10, {"approved": 2}, 5)


def test_a_window_closes_grace_seconds_after_its_end_in_stream_time():
    from pipeline.windows import is_late

    end = 600  # the window [300, 600)
    assert not is_late(300, end + 119.999, 300, 120)
    assert is_late(300, end + 120, 300, 120)  # exactly at end + grace: closed
    assert is_late(599.9, end + 120, 300, 120)
    assert not is_late(600, end + 120, 300, 120)  # the next window is open
    assert not is_late(0, float("-inf"), 300, 120)  # no stream time yet


def test_windows_expire_on_stream_time_after_their_retention():
    from tables.payments import expired_keys

    keys = ["0|pos|1", "300|pos|1", "600|1"]
    assert expired_keys(keys, 300, stream_time=300 + 300 + 7200, retention=7200) == [
        "0|pos|1", "300|pos|1"]
    assert expired_keys(keys, 300, stream_time=7499, retention=7200) == []


def judge(clock, batches, committed=0, finest=300, grace=120):
    """Late decisions, as the ingest handler makes them, batch by batch."""
    from pipeline.windows import is_late

    decisions = {}
    for batch in batches:
        clock.begin_batch(batch[0][0], committed)
        for offset, ts in batch:
            decisions[offset] = is_late(ts, clock.stream_time, finest, grace)
            if offset > clock.last_offset:
                clock.last_offset = offset
                clock.stream_time = max(clock.stream_time, ts)
    return decisions


@given(st.lists(st.integers(0, 3000), min_size=4, max_size=60), st.data())
def test_a_replay_judges_lateness_as_the_first_pass_did(times, data):
    """The stored clock may be ahead of the committed offset (the worker died after
    storing it); replaying from the committed offset, in other batch sizes, gives every
    event the verdict it had the first time."""
    from pipeline.windows import StreamClock

    events = list(enumerate(times))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, len(events) - 1), max_size=8))))
    batches = [events[a:b] for a, b in zip([0, *cuts], [*cuts, len(events)], strict=True)]
    clock = StreamClock()
    first = judge(clock, batches)
    committed_batch = data.draw(st.integers(0, len(batches) - 1))
    committed = batches[committed_batch][0][0]
    stored = StreamClock.from_dict(clock.to_dict())  # what RocksDB / the changelog hold
    replay = events[committed:]
    step = data.draw(st.integers(1, len(replay)))
    again = judge(stored, [replay[i:i + step] for i in range(0, len(replay), step)],
                  committed=committed)
    assert again == {o: first[o] for o, _ in replay}
