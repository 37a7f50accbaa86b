"""The seen-ids state: chunked table values, reload after assignment, expiry."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from runtime.faust_app import create_app
from runtime.settings import Settings
from tables import seen as seen_module
from tables.context import placeholder_message
from tables.histories import CustomerHistories, RecentTimes
from tables.seen import CHUNK_IDS, CustomerHistory, SeenIds, declare_seen_table


@pytest.fixture
def table(tmp_path):
    app = create_app(Settings(store_url="memory://", app_datadir=str(tmp_path),
                              broker_url="kafka://127.0.0.1:1"))
    table = declare_seen_table(app, 8)
    sent = []

    def send_changelog(partition, key, value, *args, **kwargs):  # no broker in unit tests
        sent.append((partition, key, value))
        return SimpleNamespace(message=SimpleNamespace(partition=partition))

    table.send_changelog = send_changelog
    table.sent = sent
    return app, table


def msg(partition, offset=0):
    m = placeholder_message("payments", partition)
    m.offset = offset
    return m


def test_flushed_ids_are_found_by_the_next_owner(table):
    app, t = table
    seen = SeenIds(app, t, expiry=3600)
    assert seen.first_seen(1, "a", 100.0) is None
    seen.add(1, "a", 7, 100.0)
    seen.add(1, "b", 8, 100.0)
    assert seen.first_seen(1, "a", 101.0) == 7  # pending ids count already
    seen.flush(1, msg(1, 8))
    seen.add(1, "c", 9, 100.0)  # never flushed: the next owner replays offset 9

    other = SeenIds(app, t, expiry=3600)
    assert (other.first_seen(1, "a", 200.0), other.first_seen(1, "b", 200.0)) == (7, 8)
    assert other.first_seen(1, "c", 200.0) is None
    assert other.first_seen(2, "a", 200.0) is None  # another partition, another merchant


def test_large_flushes_are_split_into_chunks(table):
    app, t = table
    seen = SeenIds(app, t, expiry=3600)
    seen.first_seen(0, "x", 0.0)
    n = 2 * CHUNK_IDS + 17
    for i in range(n):
        seen.add(0, f"tx{i}", i, 50.0)
    assert seen.flush(0, msg(0, n - 1)) == n
    values = [v for k, v in t.items() if str(k).startswith("0|")]
    assert [p for p, _, _ in t.sent] == [0, 0, 0]
    assert sorted(len(v["ids"]) for v in values) == [17, CHUNK_IDS, CHUNK_IDS]
    assert SeenIds(app, t, expiry=3600).first_seen(0, f"tx{n - 1}", 60.0) == n - 1


def test_expired_ids_are_ignored_then_purged(table):
    app, t = table
    seen = SeenIds(app, t, expiry=100)
    seen.first_seen(3, "x", 0.0)
    seen.add(3, "old", 1, 10.0)
    seen.flush(3, msg(3, 1))
    seen.add(3, "new", 2, 80.0)
    seen.flush(3, msg(3, 2))
    assert seen.first_seen(3, "old", 111.0) is None  # expired at lookup
    assert seen.first_seen(3, "new", 111.0) == 2

    assert seen.purge({3}, lambda p: msg(p), now=150.0) == 1
    assert "3|1" not in t and "3|2" in t
    assert (3, "3|1", None) in t.sent  # the tombstone went to partition 3's changelog
    assert seen.size() == 1
    assert seen.purge({3}, lambda p: msg(p), now=150.0) == 0


def test_purge_leaves_partitions_it_does_not_own(table):
    app, t = table
    seen = SeenIds(app, t, expiry=1)
    seen.first_seen(0, "x", 0.0)
    seen.add(0, "a", 1, 0.0)
    seen.flush(0, msg(0, 1))
    assert seen.purge({1, 2}, lambda p: msg(p), now=1000.0) == 0
    assert "0|1" in t


def test_an_async_purge_lets_the_loop_run_between_chunks_and_spares_a_revoked_partition(
        table):
    """Ten minutes of ids take tens of seconds to purge: the timer's purge gives the event
    loop a turn after every chunk. A partition revoked in such a turn keeps the rest of its
    chunks: their tombstones are its next owner's to write."""
    app, t = table
    seen = SeenIds(app, t, expiry=100)
    n = 2 * CHUNK_IDS + 17  # three chunks per partition
    for p in (0, 1):
        seen.first_seen(p, "x", 0.0)
        for i in range(n):
            seen.add(p, f"{p}-{i}", i, 10.0)
        seen.flush(p, msg(p, n - 1))
    turns = []

    async def main():
        async def meanwhile():
            while not seen.purged:
                await asyncio.sleep(0)
            turns.append(seen.purged)
            seen.forget(0)  # a rebalance between two chunks of partition 0

        other = asyncio.create_task(meanwhile())
        dropped = await seen.purge_async([0, 1], lambda p: msg(p), now=1000.0)
        await other
        return dropped

    assert asyncio.run(main()) == CHUNK_IDS + n
    assert turns == [CHUNK_IDS]  # the loop ran after the first chunk, not after the purge
    tombstones = [key for _, key, value in t.sent if value is None]
    assert sum(key.startswith("0|") for key in tombstones) == 1
    assert sum(key.startswith("1|") for key in tombstones) == 3


def test_forget_drops_what_was_not_flushed(table):
    app, t = table
    seen = SeenIds(app, t, expiry=3600)
    seen.first_seen(0, "x", 0.0)
    seen.add(0, "a", 1, 0.0)
    seen.forget(0)
    assert seen.first_seen(0, "a", 1.0) is None


# -- customer histories on disk give the rules what the in-memory reference gives -----------

PAYMENT = st.tuples(st.sampled_from(["c0", "ü1"]),  # customer
                    st.floats(0, 1200),  # event time, seconds after NOW
                    st.sampled_from([4_500, 899_999, 900_000, 950_000, 999_999, 1_000_000]),
                    st.sampled_from(["EUR", "USD"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(payments=st.lists(PAYMENT, min_size=5, max_size=80),
       flush_every=st.integers(1, 40), redelivered=st.sets(st.integers(0, 79)),
       keep=st.integers(1, 10), horizon=st.floats(1, 2000))
def test_histories_on_disk_give_the_verdicts_of_the_in_memory_reference(
        table, payments, flush_every, redelivered, keep, horizon):
    """Memory (each customer's ``keep`` newest times, customers idle for ``horizon``
    evicted at each flush) in front of the disk gives the verdicts of every payment
    kept in a sorted list, whatever is flushed, evicted or delivered again."""
    from agents.ingest import _history
    from pipeline.metrics import SortedHistory
    from tests.helpers import shipped_config

    app, t = table
    t.data.clear()  # the fixture's table outlives one example
    engine = shipped_config().engine
    seen = SeenIds(app, t, expiry=10**9, ids_in_memory=False,
                   recent_times=RecentTimes(keep=keep, horizon=horizon))
    NOW = 1_790_000_000.0
    txs = []
    for offset, (customer, dt, amount, currency) in enumerate(payments):
        tx = _payment(customer, NOW + dt, amount, currency)
        txs.append(tx)
        seen.add(5, f"tx{offset}", offset, NOW, (customer, tx.event_ts, amount, currency))
        if offset % flush_every == flush_every - 1:
            seen.flush(5, msg(5, offset))
            seen.recent_times.evict(5)
    for offset in sorted(redelivered):  # delivered again, before or after a flush: once
        if offset < len(txs):
            tx = txs[offset]
            seen.add(5, f"tx{offset}", offset, NOW,
                     (tx.customer_id, tx.event_ts, tx.amount_minor, tx.currency))
    reference: dict[str, SortedHistory] = {}
    for offset, tx in enumerate(txs):
        reference.setdefault(tx.customer_id, SortedHistory()).add(
            (tx.event_ts, offset, tx.amount_minor, tx.currency))
    stored = _history(seen, 5)
    flagged = 0
    for offset, tx in enumerate(txs):
        want = engine.extract(tx, offset, lambda c: reference.get(c, ()))
        got = engine.extract(tx, offset, stored)
        assert got.rows() == want.rows(), offset
        flags = dict(got.rows()).get("compliance", {})
        flagged += flags.get("compliance_velocity", 0) + flags.get("compliance_structuring", 0)
    seen.histories.close()
    event(f"flagged {'some' if flagged else 'none'}")


def _payment(customer, event_ts, amount, currency):
    from datetime import UTC, datetime

    from models.events import ParsedTransaction

    return ParsedTransaction(
        transaction_id="t", event_time=datetime.fromtimestamp(event_ts, UTC), merchant_id="m",
        customer_id=customer, amount_minor=amount, currency=currency, channel="pos",
        payment_method="card", status="approved", decline_code=None, country="DE",
        processing_ms=1)


def test_forget_and_reload_rebuild_the_histories_from_the_table(table):
    app, t = table
    seen = SeenIds(app, t, expiry=3600, ids_in_memory=False)
    seen.add(2, "a", 1, 10.0, ("c", 100.0, 5, "EUR"))
    seen.add(2, "b", 2, 10.0, ("c", 101.0, 6, "EUR"))
    seen.flush(2, msg(2, 2))
    seen.add(2, "c", 3, 10.0, ("c", 102.0, 7, "EUR"))  # never flushed
    assert sorted(seen.history(2, "c").between(0, 1e9)) == [
        (100.0, 1, 5, "EUR"), (101.0, 2, 6, "EUR"), (102.0, 3, 7, "EUR")]
    assert seen.size() == 0  # no ids in memory: PostgreSQL's claims decide
    seen.forget(2)
    assert list(seen.history(2, "c").between(0, 1e9)) == [
        (100.0, 1, 5, "EUR"), (101.0, 2, 6, "EUR")]  # reloaded from the table
    assert list(seen.history(2, "c").amounts("EUR", 6, 7)) == [(101.0, 2, 6, "EUR")]
    assert seen.purge({2}, lambda p: msg(p), now=4000.0) == 2
    assert list(seen.history(2, "c").between(0, 1e9)) == []
    seen.histories.close()


def test_recent_times_say_when_memory_may_have_lost_a_payment():
    times = RecentTimes(keep=2, horizon=100)
    for ts, offset in ((10.0, 1), (30.0, 3), (20.0, 2), (20.0, 2)):  # out of order, again
        times.add(0, "a", ts, offset)
    assert times.times(0, "a", 15, 40) == [(20.0, 2), (30.0, 3)]
    assert times.times(0, "a", 5, 40) is None  # 10 s was dropped for the cap: ask the disk
    times.add(0, "b", 500.0, 4)
    assert times.evict(0) == 1  # "a" had nothing within 100 s of 500
    assert times.times(0, "a", 25, 40) is None  # it had a payment at 30 s
    assert times.times(0, "a", 31, 40) == [] and times.times(0, "z", 31, 40) == []
    assert times.times(1, "a", 0, 1e9) == []  # another partition
    times.drop(0)
    assert times.size() == 0


def test_a_busy_customer_is_judged_from_memory_and_the_disk_is_read_only_if_needed():
    """Memory keeps a customer's newest payments: when they already exceed the velocity
    limit, the disk is never read; when they do not, the rest comes from disk once."""
    times = RecentTimes(keep=3, horizon=1e9)
    stored = [(float(ts), ts // 10, 100, "EUR") for ts in range(10, 60, 10)]  # offsets 1-5
    for ts, offset, _, _ in stored:
        times.add(0, "a", ts, offset)
    reads: list[tuple] = []

    class Disk:
        def between(self, partition, customer, low, high):
            reads.append((partition, customer, low, high))
            return iter([e for e in stored if low <= e[0] <= high])

    history = CustomerHistory(Disk(), times, 0, "a", None)  # type: ignore[arg-type]
    assert times.times(0, "a", 0, 100) is None  # 10 s and 20 s were dropped for the cap
    found = iter(history.times(0, 100))
    assert [next(found) for _ in range(3)] == [(30.0, 3), (40.0, 4), (50.0, 5)]
    assert reads == []  # enough to flag it: nothing read from disk
    assert list(found) == [(10.0, 1), (20.0, 2)]  # the rest, each payment once
    assert reads == [(0, "a", 0, 100)]


def test_the_histories_report_their_native_memory(tmp_path):
    """What /payments/stats shows of RocksDB: memtables hold what was written; index and
    filter blocks sit in the block cache, so none are held outside it."""
    histories = CustomerHistories(tmp_path)
    try:
        before = histories.memory()
        histories.put(1, [(f"c{i % 50}", 1_800_000_000.0 + i, i, 1000 + i, "EUR")
                          for i in range(2000)])
        after = histories.memory()
    finally:
        histories.close()
    assert after["databases"] == before["databases"] == 1
    assert after["memtables"] > before["memtables"]
    assert after["table_readers"] == 0


entry_texts = st.one_of(st.text(max_size=12), st.sampled_from(['a"b', "a\\b", "é", "tx-1"]))
entry = st.one_of(
    st.tuples(entry_texts, st.integers(0, 10**9), st.floats(0, 2e9)),
    st.tuples(entry_texts, st.integers(0, 10**9), st.floats(0, 2e9), entry_texts,
              st.floats(0, 2e9), st.integers(0, 10**12), st.sampled_from(["EUR", "USD"])))


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(entry, max_size=40), ids=st.integers(1, 9),
       size=st.integers(60, 1500))
def test_runs_bounded_at_once_are_the_chunks_an_entry_at_a_time_makes(ids, size, entries):
    """Whatever the entries (quotes, non-ASCII, two shapes mixed) and the limits."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(seen_module, "CHUNK_IDS", ids)
        patch.setattr(seen_module, "CHUNK_BYTES", size)
        assert seen_module._chunked(entries) == seen_module._chunked_each(entries)
