"""The seen-ids state: chunked table values, reload after assignment, expiry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from app.faust_app import create_app
from app.settings import Settings
from tables.context import placeholder_message
from tables.seen import CHUNK_IDS, SeenIds, declare_seen_table


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


def test_forget_drops_what_was_not_flushed(table):
    app, t = table
    seen = SeenIds(app, t, expiry=3600)
    seen.first_seen(0, "x", 0.0)
    seen.add(0, "a", 1, 0.0)
    seen.forget(0)
    assert seen.first_seen(0, "a", 1.0) is None
