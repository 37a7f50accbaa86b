"""The duplicate check's final authority: transaction_claims on the real PostgreSQL."""

from __future__ import annotations

import json
import threading

from devtools.stack import run_migrations
from storage.postgres import CLAIM_SELECT, PostgresSink, create_db_engine
from tests.helpers import execute, query


def test_the_first_record_keeps_its_claim_and_a_redelivery_finds_its_own(database_url):
    sink = PostgresSink(create_db_engine(database_url))
    assert sink.claim("payments", 0, [("a", 10), ("b", 11)]) == {}
    # the same records again (a redelivery after a crash, or the partition's next owner)
    assert sink.claim("payments", 0, [("a", 10), ("b", 11)]) == {}
    # the same ids from other records: another offset, another partition
    assert sink.claim("payments", 0, [("a", 30)]) == {"a": ("payments", 0, 10)}
    assert sink.claim("payments", 3, [("b", 11), ("c", 12)]) == {"b": ("payments", 0, 11)}
    rows = query(database_url, "SELECT transaction_id, source_partition, source_offset "
                               "FROM transaction_claims ORDER BY 1")
    assert rows == [("a", 0, 10), ("b", 0, 11), ("c", 3, 12)]


def test_ids_with_copy_special_characters_claim_as_they_are(database_url):
    sink = PostgresSink(create_db_engine(database_url))
    odd = ["tab\there", "back\\slash", "new\nline", "\\N"]
    assert sink.claim("payments", 1, [(x, i) for i, x in enumerate(odd)]) == {}
    assert {r[0] for r in query(database_url, "SELECT transaction_id FROM transaction_claims")
            } == set(odd)
    assert sink.claim("payments", 2, [(odd[3], 9)]) == {odd[3]: ("payments", 1, 3)}


def test_two_workers_claiming_at_once_get_one_winner_each(database_url):
    """Many ids claimed from two partitions at the same time: each id is won by exactly one
    record, and the loser is told which one (the second statement's fresh snapshot sees a
    claim committed while its INSERT waited)."""
    ids = [f"tx{i}" for i in range(3000)]
    answers: dict[int, dict] = {}
    start = threading.Barrier(2)

    def claim(partition: int) -> None:
        sink = PostgresSink(create_db_engine(database_url))
        start.wait()
        answers[partition] = sink.claim("payments", partition,
                                        [(x, 100 + i) for i, x in enumerate(ids)])

    threads = [threading.Thread(target=claim, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lost = {p: set(a) for p, a in answers.items()}
    assert lost[0].isdisjoint(lost[1]) and lost[0] | lost[1] == set(ids)
    owners = dict(query(database_url, "SELECT transaction_id, source_partition "
                                      "FROM transaction_claims"))
    for p in (0, 1):
        assert all(owners[x] == 1 - p for x in lost[p])


def test_migration_backfills_claims_of_stored_transactions(database_url):
    execute(database_url, "DELETE FROM transaction_claims")
    execute(database_url, """
        INSERT INTO normalized_transactions (transaction_id, event_time, merchant_id,
            customer_id, amount_minor, currency, channel, payment_method, status, country,
            processing_ms, source_topic, source_partition, source_offset)
        VALUES ('old', now(), 'm', 'c', 1, 'EUR', 'pos', 'card', 'approved', 'DE', 1,
                'payments', 2, 5)""")
    run_migrations(database_url, "0003", down=True)
    run_migrations(database_url)
    sink = PostgresSink(create_db_engine(database_url))
    assert sink.claim("payments", 0, [("old", 1)]) == {"old": ("payments", 2, 5)}


def test_one_fetch_claims_several_partitions_at_once(database_url):
    """An id in the batches of two partitions of one fetch goes to the lower partition;
    the same call again (a redelivery) finds the same answer."""
    sink = PostgresSink(create_db_engine(database_url))
    assert sink.claim("payments", 1, [("old", 4)]) == {}
    batches = {3: [("x", 7), ("y", 8)], 2: [("x", 5), ("old", 6)], 0: []}
    expected = {3: {"x": ("payments", 2, 5)}, 2: {"old": ("payments", 1, 4)}}
    assert sink.claim_many("payments", batches) == expected
    assert sink.claim_many("payments", batches) == expected
    assert sink.claim_many("payments", {0: []}) == {}


def test_the_claim_looks_each_id_up_by_its_key_whatever_the_statistics(database_url):
    """A join with the whole claims table was the planner's choice for a large batch (a
    hash join over every claim: milliseconds per batch, growing with the table)."""
    execute(database_url, """
        INSERT INTO transaction_claims
        SELECT 'tx' || g, 'payments', g % 4, g FROM generate_series(1, 50000) g""")
    ids = [f"tx{i}" for i in range(5000)]
    plan = "\n".join(r[0] for r in query(
        database_url, f"EXPLAIN {CLAIM_SELECT}",
        {"topic": "payments", "batches": json.dumps({"0": [[x, i] for i, x in enumerate(ids)]})}))
    assert "Index Cond: (transaction_id = " in plan
    assert "Seq Scan on transaction_claims" not in plan
    assert "Hash Join" not in plan and "Merge Join" not in plan


def test_the_claims_connection_lost_is_replaced_and_the_claim_retried(database_url):
    """The duplicate check holds its own connection: when PostgreSQL ends it (a restart,
    a failover), the next claim connects again and nothing is lost or claimed twice."""
    sink = PostgresSink(create_db_engine(database_url), give_up_after=30)
    assert sink.claim("payments", 0, [("a", 1)]) == {}
    execute(database_url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    assert sink.claim("payments", 1, [("a", 7), ("b", 8)]) == {"a": ("payments", 0, 1)}
    assert sink.claim("payments", 1, [("b", 8)]) == {}
    assert sorted(query(database_url, "SELECT transaction_id, source_partition "
                                      "FROM transaction_claims")) == [("a", 0), ("b", 1)]
