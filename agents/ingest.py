"""The ingest batch handler: parse, validate, de-duplicate, count, dead-letter, hand on.

Runs for every fetched batch of one ``payments`` partition (see
:mod:`app.batching`), inside the consumer's fetch loop, so the next fetch
waits for it: that is the back-pressure. Per batch it emits one
``payments-dlq`` record per failed message and one
:class:`~models.batches.SinkBatch` to the sinks, which ack the offsets once
everything is durable. Window values go to the write-back
:class:`~tables.cache.WindowCache` and new transaction ids to
:class:`~tables.seen.SeenIds`; both reach their tables (and changelogs)
before each commit.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from faust.types import TP, Message, TopicT

from agents.sinks import SinkService
from app.batching import partition_context
from app.faust_app import PaymentApp
from models.batches import SinkBatch, WindowRow
from models.events import ErrorCategory, FailedMessage, ParsedTransaction, ValidationError
from pipeline.parse import Validator
from pipeline.windows import apply_entries, group_by_window
from tables.cache import WindowCache
from tables.payments import table_key
from tables.seen import SeenIds

RETRY_COUNT_HEADER = "x-retry-count"  # set by `faust -A app failed replay`
REPLAY_OF_HEADER = "x-replay-of"  # the failed_items.id a replayed message comes from


class IngestStats:
    """Live counters and a latency reservoir, shown in the web UI and used by the benchmark."""

    def __init__(self, reservoir: int = 200_000) -> None:
        # seconds from the producer's timestamp to the table update, newest last
        self.latencies: deque[float] = deque(maxlen=reservoir)
        # ... and to the arrival of the fetch that brought the event
        self.fetch_latencies: deque[float] = deque(maxlen=reservoir)
        self.reset()

    def reset(self) -> None:
        """Start counting afresh (the benchmark does this between its phases)."""
        self.consumed = 0
        self.accepted = 0
        self.failed = 0
        self.failed_by_category: Counter[str] = Counter()
        self.batches = 0
        self.first_event_at: float | None = None
        self.last_event_at: float | None = None
        self.latencies.clear()
        self.fetch_latencies.clear()

    def snapshot(self) -> dict:
        def pcts(values: deque[float]) -> dict[str, float | None]:
            lat = sorted(values)

            def pct(q: float) -> float | None:
                return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None

            return {"p50": pct(0.50), "p95": pct(0.95), "p99": pct(0.99)}

        span = (self.last_event_at or 0) - (self.first_event_at or 0)
        return {
            "consumed": self.consumed,
            "accepted": self.accepted,
            "failed": self.failed,
            "failed_by_category": dict(self.failed_by_category),
            "batches": self.batches,
            "events_per_second": round(self.consumed / span, 1) if span > 0 else None,
            "latency_ms": pcts(self.latencies),
            "fetch_latency_ms": pcts(self.fetch_latencies),
        }


def register_ingest(
    app: PaymentApp,
    payments: TopicT,
    dlq: TopicT,
    cache: WindowCache,
    seen: SeenIds,
    sinks: SinkService,
    validator: Validator,
) -> IngestStats:
    """Register the ``payments`` batch handler; returns its live stats."""
    stats = IngestStats()

    @app.batch_handler(payments)
    async def ingest(tp: TP, messages: Sequence[Message]) -> None:
        arrival = time.time()
        with partition_context(app, messages[-1]):
            payments_by_offset, failed = _classify(validator, seen, tp.partition, messages,
                                                   arrival)
        window_rows = _count_windows(app, cache, tp, messages, payments_by_offset)
        done = time.time()

        for item in failed:
            dlq.send_soon(
                key=f"{item.topic}-{item.partition}-{item.offset}".encode(),
                value=orjson.dumps(item.to_dict()),
            )
        _record(stats, messages, failed, arrival, done)
        await sinks.put(
            SinkBatch(tp.topic, tp.partition, list(messages), payments_by_offset, failed,
                      window_rows, arrival)
        )
        # Bound the producer's buffer (changelog + DLQ records) per batch.
        await app.producer.buffer.wait_until_ebb()

    return stats


def _classify(
    validator: Validator,
    seen: SeenIds,
    partition: int,
    messages: Sequence[Message],
    arrival: float,
) -> tuple[dict[int, ParsedTransaction], list[FailedMessage]]:
    """Parse, validate and de-duplicate one partition's batch, in offset order."""
    accepted: dict[int, ParsedTransaction] = {}
    failed: list[FailedMessage] = []
    for message in messages:
        received = message.timestamp or arrival
        result = validator.parse(message.value, received)
        tx = result.transaction
        if tx is None:
            failed.append(_failed(message, result.category or ErrorCategory.SCHEMA,
                                  result.errors, received))
            continue
        first = seen.first_seen(partition, tx.transaction_id, received)
        if first is None:
            seen.add(partition, tx.transaction_id, message.offset, received)
        elif first != message.offset:  # the same offset again is a redelivery, not a duplicate
            error = ValidationError(
                "transaction_id", "unique",
                f"transaction_id {tx.transaction_id!r} was already accepted at "
                f"{message.topic}[{partition}]@{first}", repr(tx.transaction_id))
            failed.append(_failed(message, ErrorCategory.DUPLICATE, (error,), received))
            continue
        accepted[message.offset] = tx
    return accepted, failed


def _count_windows(
    app: PaymentApp,
    cache: WindowCache,
    tp: TP,
    messages: Sequence[Message],
    payments: dict[int, ParsedTransaction],
) -> list[WindowRow]:
    """Count the batch into every window size, one lookup and one update per key."""
    rows: list[WindowRow] = []
    if not payments:
        return rows
    partition = tp.partition
    with partition_context(app, messages[-1]):
        for size in cache.tables:
            for (start, channel), entries in group_by_window(payments.items(), size).items():
                key = table_key(start, channel, partition)
                counts = cache.get(partition, size, key)
                apply_entries(counts, entries)
                # Marked dirty even when a replay added nothing: the changelog then
                # converges even if the crashed run's record never reached it.
                cache.put(partition, size, key, counts)
                rows.append(WindowRow(size, start, channel, partition, counts.copy()))
    return rows


def _failed(message: Message, category: ErrorCategory,
            errors: tuple[ValidationError, ...], received: float) -> FailedMessage:
    headers = _headers(message)
    replay_of = headers.get(REPLAY_OF_HEADER)
    return FailedMessage(
        raw=message.value if message.value is not None else b"",
        category=category,
        errors=errors,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        first_seen=datetime.fromtimestamp(received, UTC),
        retry_count=_int(headers.get(RETRY_COUNT_HEADER)) or 0,
        replay_of=_int(replay_of),
        key=message.key,
    )


def _headers(message: Message) -> dict[str, bytes]:
    headers: Any = message.headers or {}
    return dict(headers.items() if isinstance(headers, dict) else headers)


def _int(value: bytes | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def _record(stats: IngestStats, messages: Sequence[Message], failed: list[FailedMessage],
            arrival: float, done: float) -> None:
    n = len(messages)
    stats.consumed += n
    stats.failed += len(failed)
    stats.accepted += n - len(failed)
    stats.failed_by_category.update(f.category.value for f in failed)
    stats.batches += 1
    if stats.first_event_at is None:
        stats.first_event_at = arrival
    stats.last_event_at = done
    stamps = [m.timestamp for m in messages if m.timestamp]
    stats.latencies.extend(done - t for t in stamps)
    stats.fetch_latencies.extend(arrival - t for t in stamps)
