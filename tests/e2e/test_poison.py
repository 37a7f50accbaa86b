"""Poison pills on the real broker: no record, header or timestamp stops the worker.

One worker reads a stream in which every class of hostile record found in the adversarial
round (ADR 0009) is followed by valid payments. Each used to crash-loop the worker, count
a payment twice, or make later payments late. Here the worker never exits, every record
ends in exactly one of ``normalized_transactions`` and ``failed_items`` with the right
category, every payment is counted once in the windows, and nothing is late.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import yaml
from aiokafka import AIOKafkaProducer

from config import CONFIG_DIR
from devtools.services import call
from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import ensure_topic
from tests.helpers import query, read_lake, read_topic

YEAR_10000_MS = 253_402_300_800_000


@dataclass
class Record:
    value: bytes
    partition: int
    want: str  # "valid" or the failed_items category
    key: bytes = b"m-poison"
    timestamp_ms: int | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    tx_id: str | None = None


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _payment(tx_id: str, when: datetime, **changes: object) -> dict:
    body = {"schema_version": "1", "transaction_id": tx_id, "event_time": _iso(when),
            "merchant_id": "m-poison", "customer_id": "c-poison", "amount_minor": 1500,
            "currency": "EUR", "channel": "ecommerce", "payment_method": "card",
            "status": "approved", "country": "DE", "processing_ms": 80}
    body.update(changes)
    return body


def _valid(tx_id: str, when: datetime, partition: int, **extra: object) -> Record:
    value = json.dumps(_payment(tx_id, when)).encode()
    return Record(value, partition, "valid", tx_id=tx_id, **extra)  # type: ignore[arg-type]


def poison_stream(now: datetime) -> list[Record]:
    """Each hostile record, then valid payments in the same partition."""
    ms = int(now.timestamp() * 1000)
    ago = now - timedelta(seconds=30)
    out: list[Record] = []

    def then_valid(tag: str, partition: int, n: int = 3) -> None:
        out.extend(_valid(f"ok-{tag}-{i}", ago, partition) for i in range(n))

    raw = json.dumps(_payment("sur-1", ago)).replace('"c-poison"', '"c\\ud800"').encode()
    out.append(Record(raw, 0, "not_utf8"))
    then_valid("sur1", 0)
    raw = json.dumps(_payment("sur-2", ago, metadata={"k": "v"})).replace('"k"', '"k\\udc00"')
    out.append(Record(raw.encode(), 1, "not_utf8"))
    then_valid("sur2", 1)
    raw = json.dumps(_payment("sur-3", ago)).replace('"country"', '"x\\ud800": 1, "country"')
    out.append(Record(raw.encode(), 2, "not_utf8"))
    then_valid("sur3", 2)
    out.append(Record(b"x" * 900_000, 3, "not_json"))  # its DLQ record would be 1.2 MB
    then_valid("big", 3)
    out.append(_valid("ts-10000", ago, 0, timestamp_ms=YEAR_10000_MS))
    out.append(_valid("ts-1ms", ago, 1, timestamp_ms=1))
    then_valid("ts", 1)
    out.append(Record(b"{not json", 2, "not_json",
                      headers=[("x-retry-count", b"3000000000"),
                               ("x-replay-of", b"99999999999999999999")]))
    then_valid("hdr", 2)
    out.append(Record(json.dumps(_payment("cur-1", ago, currency="ZZZ")).encode(), 3,
                      "schema"))
    out.append(Record(json.dumps(_payment("dupkey", ago))[:-1].encode()
                      + b', "amount_minor": 999999999}', 3, "schema"))
    then_valid("schema", 3)
    # one transaction id, three times: another key and partition, then a record time 2 h on
    out.append(_valid("twice", ago, 0))
    again = json.dumps(_payment("twice", ago)).encode()
    out.append(Record(again, 1, "duplicate", key=b"m-other"))
    out.append(Record(again, 0, "duplicate", timestamp_ms=ms + 2 * 3600 * 1000))
    then_valid("dup", 0)
    # time: ten days ahead (record time too), 1970, and +100 s followed by on-time payments
    ahead = now + timedelta(days=10)
    out.append(Record(json.dumps(_payment("future", ahead)).encode(), 2, "rule",
                      timestamp_ms=int(ahead.timestamp() * 1000)))
    out.append(Record(json.dumps(_payment("epoch", datetime(1970, 1, 1, tzinfo=UTC))).encode(),
                      2, "rule"))
    # (its record time is now: one 100 s ahead would be believed or not depending on
    # when the worker reads it, and the test must not depend on the machine's speed)
    soon = now + timedelta(seconds=100)
    out.append(_valid("soon", soon, 2, timestamp_ms=ms))
    then_valid("after-future", 2, 30)
    # contract-valid but huge state: 64-character ids and customer ids in one partition
    for i in range(4000):
        tx_id = f"{i:06d}" + "L" * 58
        body = _payment(tx_id, ago, customer_id=f"{i:04d}" + "\u00e9" * 60)
        out.append(Record(json.dumps(body, ensure_ascii=False).encode(), 3, "valid",
                          tx_id=tx_id))
    return out


async def _produce(bootstrap: str, records: list[Record], partitions: int) -> None:
    await ensure_topic(bootstrap, "payments", partitions)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=1_048_576,
                                linger_ms=5)
    await producer.start()
    try:
        for r in records:
            await producer.send(  # in order: each partition's sequence is the stream's
                "payments", r.value, key=r.key, partition=r.partition,
                timestamp_ms=r.timestamp_ms, headers=r.headers or None)
        await producer.flush()
    finally:
        await producer.stop()


# A pattern that backtracks catastrophically on Python's re: (a+)+ against forty a's and a
# b takes 2^40 steps there. On RE2 it is linear; the worker must not stall on it.
CATASTROPHIC = "^(a+)+$|^m.*$"


def catastrophic_config(tmp_path: Path) -> Path:
    doc = yaml.safe_load((CONFIG_DIR / "validation.yaml").read_text())
    doc["schema"] = str(CONFIG_DIR / "schemas" / "transaction-v1.json")
    doc["rules"].append({"rule": "pattern", "field": "merchant_id", "pattern": CATASTROPHIC})
    path = tmp_path / "validation.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_no_hostile_record_stops_the_worker_or_counts_twice(stack, tmp_path):
    now = datetime.now(UTC)
    records = poison_stream(now)
    # the regex's worst case, under a rule the worker runs on every payment
    ago = now - timedelta(seconds=30)
    records.insert(0, Record(json.dumps(_payment("redos", ago, merchant_id="a" * 40 + "b"))
                             .encode(), 1, "rule"))
    ordinary = list(PaymentGenerator({**load_scenario(), "late_event_ratio": 0.0,
                                      "duplicate_ratio": 0.0}, seed=19).events(600))
    worker = stack.start_worker("w1", PARQUET_FLUSH_SECONDS="1",
                                VALIDATION_CONFIG=str(catastrophic_config(tmp_path)))
    asyncio.run(_produce(stack.broker.bootstrap, records, stack.partitions))
    stack.send(ordinary)
    total = len(records) + len(ordinary)
    stack.wait_until_committed(total, timeout=240)
    assert worker.alive()
    assert "Traceback" not in worker.log_path.read_text()

    url = stack.database_url
    valid_ids = {r.tx_id for r in records if r.want == "valid"} | {
        e.payload["transaction_id"] for e in ordinary}
    stored = [r[0] for r in query(url, "SELECT transaction_id FROM normalized_transactions")]
    assert len(stored) == len(set(stored)) and set(stored) == valid_ids

    failed = query(url, "SELECT raw_payload, error_category, retry_count, replay_of, "
                        "source_partition, source_offset FROM failed_items")
    want_failed = Counter((r.value, r.want) for r in records if r.want != "valid")
    assert Counter((bytes(f[0]), f[1]) for f in failed) == want_failed
    assert len(failed) + len(stored) == total
    headers = [f for f in failed if bytes(f[0]) == b"{not json"]
    assert [(f[2], f[3]) for f in headers] == [(0, None)]  # out-of-range headers dropped

    # the 900 KB payload: whole in failed_items, cut and flagged in its DLQ record
    big = next(f for f in failed if len(bytes(f[0])) == 900_000)
    dlq = {r.key: json.loads(r.value)
           for r in asyncio.run(read_topic(stack.broker.bootstrap, "payments-dlq"))}
    assert len(dlq) == len(failed)
    record = dlq[f"payments-{big[4]}-{big[5]}".encode()]
    assert record["raw_payload_truncated"] is True and record["raw_payload_bytes"] == 900_000
    assert b"x" * 1000 in base64.b64decode(record["raw_payload_b64"])

    # every accepted payment counted once in the windows, none of them late
    windows = query(url, "SELECT sum(tx_count) FROM payment_metrics_5m")[0][0]
    late = query(url, "SELECT coalesce(sum(count), 0) FROM aggregate_histograms "
                      "WHERE metric_type = 'late_events' AND window_seconds = 300")[0][0]
    assert (windows, late) == (len(valid_ids), 0)

    # the web port: no raw table views, and odd requests answered, never with a 500
    for path in ("/table/seen-transactions/", "/router/", "/table/"):
        assert call(f"{worker.web_url}{path}")[0] == 404, path
    assert call(f"{worker.web_url}/payments/tables/seen-transactions/keys/0%7C0/")[0] == 404
    assert call(f"{worker.web_url}/payments/tables/stream-clock/keys/0/")[0] == 200
    assert call(f"{worker.web_url}/payments/stats/reset/", "POST",
                {"Authorization": "Bearer \u00e9t\u00e9"})[0] == 403

    # the lake has every record once; the year-10000 record time is kept as null
    lake = read_lake(stack.raw_dir).select(
        ["partition", "offset", "transaction_id", "broker_timestamp"]).to_pylist()
    assert len(lake) == total == len({(r["partition"], r["offset"]) for r in lake})
    ts10000 = [r for r in lake if r["transaction_id"] == "ts-10000"]
    assert len(ts10000) == 1 and ts10000[0]["broker_timestamp"] is None
