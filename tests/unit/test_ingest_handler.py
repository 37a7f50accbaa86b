"""The ingest batch handler without a broker: a memory-store app, messages built by hand."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from datetime import UTC, datetime

import pytest
from faust.types import TP
from faust.types.tuples import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agents import ingest
from models.records import Record
from pipeline.columns import PaymentColumns
from pipeline.config import METRICS_KEY, ConfigManager, ConfigVersion
from runtime.faust_app import create_app
from runtime.settings import Settings
from simulator.generator import PaymentGenerator, load_scenario
from storage.config_sources import FileSource
from tables.context import partition_context
from tables.payments import WindowState
from tables.seen import SeenIds, declare_seen_table
from tests.helpers import RecordingSink, expected_windows, ingest_rig, too_late


@pytest.fixture
def handler_setup(tmp_path):
    sent: list = []  # no broker: the dead-letter records are kept here instead
    sink = RecordingSink()
    rig = ingest_rig(tmp_path, sink, sent=sent)
    return rig.app, rig.handler, rig.state, sink, rig.stats, sent


def messages(events, partition: int, first: int = 0, timestamp: float | None = None,
             headers=None) -> list[Message]:
    ts = timestamp or time.time()  # the broker's timestamp: after every event's time
    return [Message("payments", partition, first + i, ts, 0, headers, e.key,
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
    late = too_late(events)
    assert late and stats.late == len(late)  # the scenario has late events
    for size in (300, 3600):
        want = expected_windows(events, size, late)
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
    counted = 100 - len(too_late(events))
    assert sum(r.counts.tx_count for r in second.window_rows if r.window_seconds == 3600) == counted
    assert stats.late == 2 * len(too_late(events))  # judged late on each delivery


def test_a_resent_transaction_id_is_a_duplicate_but_a_redelivery_is_not(handler_setup):
    app, handler, cache, sink, stats, sent = handler_setup
    events = list(PaymentGenerator(load_scenario(), seed=10).events(20))

    async def run() -> None:
        await handler(TP("payments", 2), messages(events, 2))
        await handler(TP("payments", 2), messages(events[:5], 2))  # redelivered: same offsets
        await handler(TP("payments", 2), messages(events[3:5], 2, first=20))  # resent later

    asyncio.run(run())
    assert stats.failed == 2 and stats.failed_by_category == {"duplicate": 2}
    dup = sink.batches[-1].failed
    assert [f.offset for f in dup] == [20, 21]
    assert all(f.category.value == "duplicate" for f in dup)
    assert "already accepted at payments[2]@3" in dup[0].message
    assert dup[0].field == "transaction_id"
    assert dup[0].raw == events[3].value
    assert [f["key"] for f in sent] == [b"payments-2-20", b"payments-2-21"]


def test_a_duplicate_is_forgotten_after_the_expiry(handler_setup, monkeypatch):
    app, handler, cache, sink, stats, _ = handler_setup
    events = list(PaymentGenerator(load_scenario(), seed=12).events(3))
    now = time.time()

    async def run() -> None:
        await handler(TP("payments", 0), messages(events, 0, timestamp=now))
        # an hour and a second later on the worker's clock: ids expire on it, never on a
        # record time a producer sets (without PostgreSQL's claims, as here)
        monkeypatch.setattr(ingest.time, "time", lambda: now + 3601)
        await handler(TP("payments", 0), messages(events[:1], 0, first=3, timestamp=now + 3601))

    asyncio.run(run())
    assert stats.failed == 0 and stats.accepted == 4


def test_replay_headers_are_carried_into_the_failure(handler_setup):
    app, handler, cache, sink, stats, sent = handler_setup
    events = list(PaymentGenerator(load_scenario(), seed=13, invalid_ratio=1.0).events(1))
    headers = [("x-retry-count", b"2"), ("x-replay-of", b"77")]

    asyncio.run(handler(TP("payments", 0), messages(events, 0, headers=headers)))
    (failed,) = sink.batches[0].failed
    assert (failed.retry_count, failed.replay_of) == (2, 77)
    record = json.loads(sent[0]["value"])
    assert record["retry_count"] == 2 and record["replay_of"] == 77
    assert base64.b64decode(record["raw_payload_b64"]) == events[0].value
    assert record["errors"] and record["errors"][0]["message"] == failed.message


def test_windows_past_their_retention_leave_the_tables(handler_setup):
    from types import SimpleNamespace

    from tables.context import placeholder_message

    app, handler, state, sink, stats, _ = handler_setup
    tables = state.windows.tables
    sent = []
    for table in tables.values():
        def send_changelog(partition, key, value, *args, _sent=sent, **kwargs):
            _sent.append((key, value))
            return SimpleNamespace(message=SimpleNamespace(partition=partition))
        table.send_changelog = send_changelog
    scenario = load_scenario()
    scenario["late_event_ratio"] = 0.0
    events = list(PaymentGenerator(scenario, seed=14,
                                   start=datetime(2026, 5, 1, 9, 0, tzinfo=UTC)).events(2000))
    asyncio.run(handler(TP("payments", 3), messages(events, 3)))
    state.flush(3, placeholder_message("payments", 3))  # as the sink does before a commit
    keys = {name: set(t.data) for name, t in tables.items()}
    assert keys["window-metrics-5m"] and keys["window-counts-1h"]
    # 10 s of event time: the windows have not ended yet, so none goes ...
    assert state.expire({3}, retention=0) == 0
    # ... until the stream time is past their end plus the retention
    clock = state.cache.get(3, "stream-clock", "3")
    clock.stream_time += 7200
    deleted = state.expire({3}, retention=3600)
    assert deleted == sum(len(v) for k, v in keys.items() if k.startswith("window-"))
    assert all(not t.data for name, t in tables.items() if name.startswith("window-"))
    assert ("3", None) not in sent and any(value is None for _, value in sent)  # tombstones


def test_windows_of_a_dropped_metric_decode_after_a_restart(handler_setup):
    """A worker restarts on a configuration that no longer defines a bucketed metric
    (``risk_score``) whose windows are stored: it must still decode them, count new
    batches into them and hand their rows to the sink."""
    app, handler, state, sink, stats, _ = handler_setup
    events = list(PaymentGenerator(load_scenario(), seed=11).events(50))
    batch = messages(events, 0)

    async def run() -> None:
        await handler(TP("payments", 0), batch)
        state.flush(0, batch[-1])

    asyncio.run(run())
    stored = [k for k, v in app.tables["window-metrics-5m"].data.items()
              if any(m.startswith("risk_score|") for m in v["m"])]
    assert stored  # the scenario has risk scores

    source = FileSource()
    versions = dict(source.load())
    metrics = versions[METRICS_KEY]
    document = {**metrics.document, "extractors": [
        e for e in metrics.document["extractors"] if e["extractor"] != "risk_score"]}
    versions[METRICS_KEY] = ConfigVersion(METRICS_KEY, document, 1, "topic")
    restarted = ConfigManager(source)  # a new process: nothing activated before
    restarted.load_all_configuration(versions)
    assert restarted.bounds("risk_score") == ()

    after = WindowState(app, state.windows, restarted.bounds, grace=120,
                        source_topic="payments")
    value = after.cache.get(0, "window-metrics-5m", stored[0])
    risk = [h for m, h in value.hists.items() if m.startswith("risk_score|")]
    assert risk and all(len(h.bounds) == 9 for h in risk)
    assert value.to_dict() == app.tables["window-metrics-5m"].data[stored[0]]
    # the restarted worker counts a later batch and hands the dropped metric's rows on
    later = list(PaymentGenerator(load_scenario(), seed=11).events(60))[50:]
    engine = restarted.active.engine

    async def count_more() -> None:
        with partition_context(app, batch[-1]):
            payments = {50 + i: restarted.active.validator.parse(e.value, time.time()).transaction
                        for i, e in enumerate(later)}
            accepted = {o: tx for o, tx in payments.items() if tx}
            cols = PaymentColumns(accepted, accepted.values())
            after.count(0, 50, 0, cols, engine.extract_batch(cols))
        after.flush(0, batch[-1])

    asyncio.run(count_more())
    partials = after.take_partials(0)
    assert any(row[2] == "risk_score" for row in partials.rows)
    assert partials.bounds["risk_score"] == risk[0].bounds


class MemoryClaims:
    """PostgreSQL's claims in a dict, as ``PostgresSink.claim_many`` answers: per
    partition, the ids another record claimed first; the lower partition first."""

    def __init__(self) -> None:
        self.owner: dict[str, tuple[str, int, int]] = {}
        self.calls: list[dict[int, list]] = []

    def claim_many(self, topic, batches):
        self.calls.append({p: list(e) for p, e in batches.items()})
        out: dict[int, dict] = {}
        for partition in sorted(batches):
            for tx_id, offset in batches[partition]:
                mine = (topic, partition, offset)
                first = self.owner.setdefault(tx_id, mine)
                if first != mine:
                    out.setdefault(partition, {})[tx_id] = first
        return out


def claimed_setup(tmp_path, claims):
    sink = RecordingSink()
    rig = ingest_rig(tmp_path, sink, claims=claims, synced=True)
    return rig.app, sink, rig.seen


def outcome(sink) -> list:
    """Per sink batch: partition, the accepted offsets, the failed ones with their error."""
    return [(b.partition, sorted(b.payments),
             [(f.offset, f.category.value, f.message) for f in b.failed]) for b in sink.batches]


def test_a_fetch_is_claimed_in_one_round_trip_with_the_verdicts_of_one_claim_a_batch(
        tmp_path):
    """The preparer parses a fetch's partition batches and claims all their ids at once;
    the handlers then count what it prepared: the same verdicts as when each batch claims
    its own, an id re-sent on another partition in the same fetch included."""
    events = list(PaymentGenerator(load_scenario(), seed=12).events(60))
    fetch = [(TP("payments", 0), messages(events[:30], 0)),
             (TP("payments", 1), messages(events[30:] + events[5:8], 1))]  # 3 re-sent ids

    async def run(app, seen, prepare: bool) -> None:
        for partition in (0, 1):  # the partitions' state is loaded, as after a first batch
            await seen.load(partition)
        if prepare:
            await app.batch_preparers["payments"](fetch)
        for tp, batch in fetch:
            await app.batch_handlers["payments"](tp, batch)

    together, alone = MemoryClaims(), MemoryClaims()
    app, sink, seen = claimed_setup(tmp_path / "a", together)
    asyncio.run(run(app, seen, prepare=True))
    app2, sink2, seen2 = claimed_setup(tmp_path / "b", alone)
    asyncio.run(run(app2, seen2, prepare=False))
    assert len(together.calls) == 1 and sorted(together.calls[0]) == [0, 1]
    assert len(alone.calls) == 2
    assert outcome(sink) == outcome(sink2)
    dupes = outcome(sink)[1][2]
    assert [(o, c) for o, c, _ in dupes] == [(30, "duplicate"), (31, "duplicate"),
                                             (32, "duplicate")]
    assert "payments[0]@5" in dupes[0][2]


def test_a_batch_other_than_the_one_prepared_claims_its_own(tmp_path):
    events = list(PaymentGenerator(load_scenario(), seed=13).events(20))
    claims = MemoryClaims()
    app, sink, seen = claimed_setup(tmp_path, claims)
    tp = TP("payments", 2)

    async def run() -> None:
        await seen.load(2)
        await app.batch_preparers["payments"]([(tp, messages(events, 2))])
        await app.batch_handlers["payments"](tp, messages(events, 2))  # another list

    asyncio.run(run())
    assert len(claims.calls) == 2 and outcome(sink) == [(2, list(range(20)), [])]


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.none() | st.sampled_from(["a", "b", "c", "d", "e", "f", "g"]),
                    max_size=14),
       waiting=st.sets(st.integers(0, 13), max_size=3),
       claimed=st.sampled_from([None, {}, {"b": ("payments", 2, 40)}]))
def test_a_batch_is_classified_at_once_as_it_is_one_at_a_time(tmp_path, ids, waiting,
                                                               claimed):
    """The common batch (no id claimed first, none twice) is classified at once; the
    verdicts, record times and the ids kept for the dedupe window are what a message at
    a time gives, redeliveries waiting for the flush included."""
    app = create_app(Settings(store_url="memory://", app_datadir=str(tmp_path),
                              broker_url="kafka://127.0.0.1:1"))
    table = declare_seen_table(app, 8)
    validator = ConfigManager(FileSource())
    validator.load_all_configuration()
    parse = validator.active.validator.parse
    body = json.loads(next(iter(PaymentGenerator(load_scenario(), seed=3).events(1))).value)
    at = datetime.fromisoformat(body["event_time"]).timestamp()  # received: the rules pass
    parsed = []
    for offset, tx_id in enumerate(ids):
        raw = b"{" if tx_id is None else json.dumps({**body, "transaction_id": tx_id}).encode()
        record = Record("payments", 0, offset, at + offset, 0, [], None, raw,
                        TP("payments", 0), 1)
        parsed.append((record, parse(raw, at + offset), at + offset))
    assert all(r.ok for _, r, _ in parsed if r.raw != b"{")
    outcomes = []
    for at_once in (True, False):
        seen = SeenIds(app, table, expiry=3600)
        for offset in waiting:  # accepted before, not yet flushed: delivered again now
            seen.add(0, ids[offset] or "x", offset, 5.0) if offset < len(ids) else None
        result = ingest._classify(parsed, seen, 0, None if claimed is None else dict(claimed),
                                  at + 99, at_once=at_once)
        outcomes.append((result, seen._pending.get(0), seen._pending_offsets.get(0),
                         seen._index.get(0)))
    assert outcomes[0] == outcomes[1]
