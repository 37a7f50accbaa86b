"""The rules over a customer's payments, judged in PostgreSQL across every merchant
(storage.customer_rules): the flags equal an independent computation of the semantics in
any order and split of arrival, two writers of one customer see each other, and a hot
customer's evidence stays bounded."""

from __future__ import annotations

import json
import random
import threading
import time
from datetime import datetime, timedelta

import psycopg2
import pytest

import storage.customer_rules as judging
from devtools.services import libpq_dsn
from pipeline.batches import SinkBatch
from pipeline.compliance import EVIDENCE_PAYMENTS
from storage.postgres import STAGE_TRANSACTIONS, PostgresSink, create_db_engine
from tests.helpers import customer_payment as doc
from tests.helpers import customer_traffic as traffic
from tests.helpers import execute, parse, query, shipped_config

RULES = shipped_config().engine.customer_rules
VERSION = "schema=v1;metrics=v1;compliance=v1"


def batch(docs: list[dict], partition: int, first: int) -> SinkBatch:
    payments = {first + i: parse(json.dumps(d).encode()).transaction for i, d in enumerate(docs)}
    assert all(payments.values())
    return SinkBatch("payments", partition, [], payments, [], [], time.time(), {}, VERSION,
                     customer_rules=RULES)


def expected(docs: list[dict]) -> set[tuple[str, str]]:
    """The semantics of docs/metrics.md, computed from the documents alone."""
    rules = {r.kind: r for r in RULES}
    velocity, structuring = rules["velocity"], rules["structuring"]
    parsed = [(d["transaction_id"], d["customer_id"],
               datetime.fromisoformat(d["event_time"].replace("Z", "+00:00")),
               d["amount_minor"], d["currency"]) for d in docs]

    def in_band(amount: int, currency: str) -> bool:
        limit = structuring.thresholds.get(currency)
        return limit is not None and limit * structuring.fraction <= amount < limit

    out = set()
    for tx_id, customer, t, amount, currency in parsed:
        w = timedelta(seconds=velocity.within)
        n = sum(1 for _, c, u, _, _ in parsed if c == customer and t - w < u <= t)
        if n > velocity.max_payments:
            out.add((tx_id, "velocity"))
        if in_band(amount, currency):
            w = timedelta(seconds=structuring.within)
            n = sum(1 for _, c, u, a, cur in parsed
                    if c == customer and cur == currency and in_band(a, cur) and t - w < u <= t)
            if n >= structuring.min_payments:
                out.add((tx_id, "structuring"))
    return out


def customer_flags(url: str) -> set[tuple[str, str]]:
    return {(r[0], r[1]) for r in query(url, "SELECT transaction_id, rule FROM compliance_flags "
                                             "WHERE rule IN ('velocity', 'structuring')")}


def write_shuffled(sink: PostgresSink, docs: list[dict], rng: random.Random) -> None:
    """Every payment once, in a random order and random batches, each batch from one of
    four partitions, as workers would store them."""
    order = docs[:]
    rng.shuffle(order)
    offsets = [0, 0, 0, 0]
    while order:
        size = rng.randrange(1, 40)
        part, order = order[:size], order[size:]
        p = rng.randrange(4)
        sink.write([batch(part, p, offsets[p])])
        offsets[p] += size


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_flags_are_the_semantics_in_any_order_of_arrival(database_url, seed):
    docs = traffic(seed)
    want = expected(docs)
    assert {r for _, r in want} == {"velocity", "structuring"}, "the traffic trips both"
    sink = PostgresSink(create_db_engine(database_url))
    write_shuffled(sink, docs, random.Random(seed))
    assert customer_flags(database_url) == want
    counted = sink.compliance_flags()
    assert counted.get("compliance_velocity", 0) == sum(1 for _, r in want if r == "velocity")
    # a replay of everything, in another order, adds nothing
    write_shuffled(sink, docs, random.Random(seed + 100))
    assert customer_flags(database_url) == want


def test_evidence_names_the_payments_in_the_window_across_merchants(database_url):
    docs = [doc(i, "c-burst", 60 * i, merchant=f"m{i:02d}") for i in range(7)]
    sink = PostgresSink(create_db_engine(database_url))
    sink.write([batch(docs[3:], 1, 0)])  # the later ones first, from another partition
    sink.write([batch(docs[:3], 2, 0)])
    rows = dict(query(database_url, "SELECT transaction_id, evidence FROM compliance_flags "
                                    "WHERE rule = 'velocity'"))
    assert set(rows) == {"tx-c-5", "tx-c-6"}  # 6 and 7 payments within 600 s
    evidence = rows["tx-c-6"]
    assert (evidence["counted"], evidence["complete"], evidence["max_payments"],
            evidence["within_seconds"]) == (7, True, 5, 600)
    assert [(e["transaction_id"], e["merchant_id"]) for e in evidence["payments"]] == \
        [(f"tx-c-{i}", f"m{i:02d}") for i in range(7)]
    assert evidence["payments"][0]["event_time"] == "2026-11-22T09:00:00.000000Z"


def test_two_writers_of_one_customer_see_each_other(database_url, monkeypatch):
    """Writer A stores three payments of a customer and holds its transaction open after
    judging them; writer B stores three more. B must wait for A's commit (the customer's
    lock) and then count A's payments: the sixth payment in ten minutes is flagged. Were
    B not to wait, each would count three and nothing would be flagged."""
    docs = [doc(i, "c-two", 60 * i, merchant=f"m{i}") for i in range(6)]
    judged, go = threading.Event(), threading.Event()
    real = judging.judge

    def judge_then_hold(cur, rules, payments, version):
        rows = real(cur, rules, payments, version)
        if any(p.transaction_id == "tx-c-0" for p in payments):  # writer A: hold it open
            judged.set()
            assert go.wait(30)
        return rows

    monkeypatch.setattr(judging, "judge", judge_then_hold)
    errors: list[BaseException] = []

    def write(part: list[dict], partition: int) -> None:
        try:
            PostgresSink(create_db_engine(database_url)).write([batch(part, partition, 0)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    a = threading.Thread(target=write, args=(docs[:3], 0))
    a.start()
    assert judged.wait(30)
    b = threading.Thread(target=write, args=(docs[3:], 1))
    b.start()
    conn = psycopg2.connect(libpq_dsn(database_url))
    try:
        deadline = time.monotonic() + 30
        while True:  # B waits on the customer's advisory lock, held by A
            with conn.cursor() as cur:
                cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                            "AND NOT granted")
                if cur.fetchone()[0] == 1:
                    break
            conn.rollback()
            assert time.monotonic() < deadline, "writer B never waited for writer A"
            time.sleep(0.05)
    finally:
        conn.close()
    go.set()
    a.join(30)
    b.join(30)
    assert not errors, errors
    assert customer_flags(database_url) == {("tx-c-5", "velocity")} == expected(docs)


def test_a_hot_customer_has_bounded_evidence_and_exact_verdicts(database_url):
    """600 payments of one customer in ten minutes, the latest first: every payment from
    the sixth is flagged, and no evidence lists more than EVIDENCE_PAYMENTS."""
    docs = [doc(i, "c-hot", i * 0.9) for i in range(600)]
    sink = PostgresSink(create_db_engine(database_url))
    for first in range(500, -1, -100):  # newest batch first: each earlier one re-judges
        sink.write([batch(docs[first:first + 100], 0, first)])
    assert customer_flags(database_url) == expected(docs)
    sizes = query(database_url, "SELECT jsonb_array_length(evidence -> 'payments'), "
                                "(evidence ->> 'complete')::boolean FROM compliance_flags")
    assert max(n for n, _ in sizes) == EVIDENCE_PAYMENTS
    assert any(not complete for _, complete in sizes)


def test_the_flags_already_made_are_looked_up_by_key_whatever_the_statistics(database_url):
    """Whether a payment a write reaches is flagged already was an anti-join the planner
    made by hashing every flag of the rule (15 ms of a 3,000-payment write with 32,375
    velocity flags, growing with the table); each is looked up by its key now."""
    execute(database_url, """
        INSERT INTO compliance_flags (transaction_id, rule, customer_id, merchant_id,
                                      event_time, amount_minor, currency, config_version,
                                      evidence)
        SELECT 'tx' || g, 'velocity', 'c' || g % 5000, 'm', now(), 1, 'EUR', 'v', '{}'
        FROM generate_series(1, 50000) g""")
    ids = [f"new{i}" for i in range(3000)]
    conn = psycopg2.connect(libpq_dsn(database_url))
    try:
        cur = conn.cursor()
        cur.execute(STAGE_TRANSACTIONS)
        cur.execute("""
            INSERT INTO stage_transactions (transaction_id, event_ts, customer_id, currency,
                                            amount_minor)
            SELECT 'new' || g, extract(epoch FROM now()), 'c' || g % 5000, 'EUR', 100
            FROM generate_series(0, 2999) g""")
        velocity = next(r for r in RULES if r.kind == "velocity")
        sql, values = judging.statement(velocity, json.dumps(ids), VERSION)
        cur.execute("EXPLAIN " + sql, values)
        plan = "\n".join(r[0] for r in cur.fetchall())
    finally:
        conn.close()
    assert "pk_compliance_flags on compliance_flags f" in plan
    assert "Hash Anti Join" not in plan
    assert "Seq Scan on compliance_flags" not in plan
    assert "Bitmap Heap Scan on compliance_flags" not in plan
