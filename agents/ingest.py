"""The ingest batch handler: parse, validate, de-duplicate, count, dead-letter, hand on.

Runs for every fetched batch of one ``payments`` partition (see
:mod:`runtime.batching`), inside the consumer's fetch loop, so the next fetch
waits for it: that is the back-pressure. A fetch's partition batches are first
parsed and validated together, and their ids claimed in PostgreSQL in one round trip
(``prepare``); then per batch, in offset order:

1. de-duplicate (:func:`_classify`);
2. decide which accepted payments are too late for the windows: a payment is
   late when its 5-minute window ended ``grace`` seconds or more before the
   partition's stream time (the newest event time so far); a late payment is
   left out of every window size (so an hourly window stays the merge of its
   5-minute windows) and counted in the ``late_events`` windowed metric;
3. extract each payment's metrics (:class:`~pipeline.metrics.MetricEngine`);
4. count the on-time payments into the window tables, one update per key.

It emits one ``payments-dlq`` record per failed message and one
:class:`~pipeline.batches.SinkBatch` to the sinks, which commit the offsets once
everything is durable. Window values and the stream clock go to
:class:`~tables.payments.WindowState` (behind its write-back cache) and new
transaction ids to :class:`~tables.seen.SeenIds`; all reach their tables (and
changelogs) before each commit.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from faust.types import TP, TopicT

from agents.config import ConfigSync
from agents.sinks import SinkService
from models.events import (
    REPLAY_OF_HEADER,
    RETRY_COUNT_HEADER,
    ErrorCategory,
    FailedMessage,
    ParsedTransaction,
    ParseResult,
    ValidationError,
)
from models.records import Record
from pipeline.batches import SinkBatch
from pipeline.columns import PaymentColumns
from pipeline.config import ActiveConfig, ConfigManager
from pipeline.metrics import BatchMetrics, History
from pipeline.parse import Validator
from pipeline.records import INT4_MAX, INT8_MAX, bounded_int, dead_letter_value, record_times
from runtime.faust_app import PaymentApp
from runtime.telemetry import Telemetry
from tables.context import partition_context
from tables.payments import WindowState
from tables.seen import SeenIds

log = logging.getLogger(__name__)


class IngestStats:
    """Live counters and a latency reservoir, shown in the web UI and used by the benchmark."""

    def __init__(self, reservoir: int = 50_000) -> None:
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
        self.late = 0
        self.extractor_errors: Counter[str] = Counter()
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
            "late_events": self.late,
            "extractor_errors": dict(self.extractor_errors),
            "batches": self.batches,
            "events_per_second": round(self.consumed / span, 1) if span > 0 else None,
            "latency_ms": pcts(self.latencies),
            "fetch_latency_ms": pcts(self.fetch_latencies),
        }


def register_ingest(
    app: PaymentApp,
    payments: TopicT,
    dlq: TopicT,
    windows: WindowState,
    seen: SeenIds,
    sinks: SinkService,
    config: ConfigManager,
    config_sync: ConfigSync,
    telemetry: Telemetry,
    claims: Claims | None = None,
) -> IngestStats:
    """Register the ``payments`` batch handler; returns its live stats.

    ``claims`` is the duplicate check's final authority (PostgreSQL:
    :meth:`storage.postgres.PostgresSink.claim`); without it (unit tests) only the
    partition's in-memory ids are checked.
    """
    stats = IngestStats()

    # the batches of the fetch being handled, prepared together (parsed and claimed in
    # one round trip by prepare below), by partition; each handler takes its own
    prepared: dict[TP, Prepared] = {}

    async def claim(batches: Sequence[tuple[TP, Sequence[Record]]],
                    arrival: float) -> dict[TP, Prepared]:
        """Parse the batches of loaded partitions under the active configuration and claim
        all their ids in one round trip; nothing when a rebalance ran meanwhile (each
        handler that still runs starts afresh)."""
        generation = app.consumer_generation_id
        active = config.active  # each batch runs under this one version
        ready = [(tp, messages, sinks.epoch(tp.partition),
                  _parse(active.validator, messages, arrival)) for tp, messages in batches]
        claimed = None
        if claims is not None and ready:
            claimed = await asyncio.to_thread(
                claims.claim_many, ready[0][0].topic,
                {tp.partition: _first_ids(parsed) for tp, _, _, parsed in ready})
            if app.consumer_generation_id != generation:
                return {}
        return {tp: Prepared(messages, arrival, epoch, active, parsed,
                             None if claimed is None else claimed.get(tp.partition, {}))
                for tp, messages, epoch, parsed in ready}

    async def start(tp: TP, messages: Sequence[Record]) -> Prepared | None:
        """One partition's batch, when the fetch's were not prepared together: the first
        sync of the configuration and the partition's first load wait here (None:
        revoked meanwhile)."""
        arrival = time.time()
        epoch = sinks.epoch(tp.partition)  # a revocation while this batch waits drops it
        if not config_sync.synced:  # the topic's version, never the source's, if one exists
            generation = app.consumer_generation_id
            await config_sync.first_sync()
            if app.consumer_generation_id != generation:
                return None  # rebalanced meanwhile: fetched again, if still ours
        partition = tp.partition
        # the first batch since the assignment loads the partition's state first
        if not seen.loaded(partition) and (not await seen.load(partition)
                                           or sinks.epoch(partition) != epoch):
            return None  # revoked meanwhile: fetched again, if still ours
        return (await claim([(tp, messages)], arrival)).get(tp)

    @app.batch_preparer(payments)
    async def prepare(batches: Sequence[tuple[TP, Sequence[Record]]]) -> None:
        """Parse every partition's batch of one fetch and claim all their ids in one round
        trip: a claim per partition batch, in turn, was half of the fetch loop's time at
        5,000 events/s (3-5 ms each on a busy PostgreSQL)."""
        prepared.clear()
        if claims is None or not config_sync.synced:
            return  # each handler starts its own batch (the first sync waits there)
        prepared.update(await claim(
            [(tp, messages) for tp, messages in batches if seen.loaded(tp.partition)],
            time.time()))

    @app.batch_handler(payments)
    async def ingest(tp: TP, messages: Sequence[Record]) -> bool:
        batch = prepared.pop(tp, None)
        if batch is None or batch.messages is not messages:
            batch = await start(tp, messages)
            if batch is None:
                return False
        if batch.epoch != sinks.epoch(tp.partition):
            return False  # revoked since it was prepared: fetched again, if still ours
        arrival, epoch, active, parsed, claimed = (batch.arrival, batch.epoch, batch.active,
                                                   batch.parsed, batch.claimed)
        engine = active.engine
        partition = tp.partition
        with partition_context(app, messages[-1]):
            payments_by_offset, failed, received = _classify(parsed, seen, partition,
                                                             claimed, arrival)
            cols = PaymentColumns(payments_by_offset, payments_by_offset.values())
            metrics = engine.extract_batch(cols, _history(seen, partition))
            window_rows, late = windows.count(
                partition, messages[0].offset, sinks.committed_offsets.get(partition, 0),
                cols, metrics, failed,
                np.fromiter(received.values(), np.float64, count=len(received)))
        done = time.time()

        for item in failed:
            dlq.send_soon(
                key=f"{item.topic}-{item.partition}-{item.offset}".encode(),
                value=dead_letter_value(item.to_dict(payload=False), item.raw),
            )
        latencies = _record(stats, parsed, failed, arrival, done)
        stats.late += late
        telemetry.record_batch(len(messages), [f.category.value for f in failed], late,
                               done - arrival, latencies)
        _record_extractor_errors(stats, metrics, {
            "topic": tp.topic, "partition": partition, "batch_size": len(messages),
            "offsets": f"{messages[0].offset}-{messages[-1].offset}",
            "config_version": active.version})
        taken = await sinks.put(
            SinkBatch(tp.topic, tp.partition, list(messages), payments_by_offset, failed,
                      window_rows, arrival, metrics, active.version, epoch,
                      engine.customer_rules)
        )
        # Bound the producer's buffer (changelog + DLQ records) per batch.
        await app.producer.buffer.wait_until_ebb()
        return taken

    return stats


Parsed = list[tuple[Record, ParseResult, float]]  # (message, verdict, record time)
_TIMESTAMP = operator.attrgetter("timestamp")


@dataclass(slots=True)
class Prepared:
    """One partition's batch, parsed and its ids claimed, ready to be counted."""

    messages: Sequence[Record]  # the very list the handler is given
    arrival: float  # time.time() the fetch was taken up
    epoch: int  # the sinks' epoch of its partition then
    active: ActiveConfig  # the configuration version it was parsed under
    parsed: Parsed
    claimed: dict[str, tuple[str, int, int]] | None  # the ids others claimed first


class Claims(Protocol):
    """The duplicate check's final authority (:class:`storage.postgres.PostgresSink`)."""

    def claim_many(self, topic: str, batches: Mapping[int, Sequence[tuple[str, int]]],
                   ) -> dict[int, dict[str, tuple[str, int, int]]]: ...


def _parse(validator: Validator, messages: Sequence[Record], arrival: float) -> Parsed:
    """Parse and validate one partition's batch, in offset order (the rules over the
    whole batch: :meth:`~pipeline.parse.Validator.parse_many`)."""
    received = record_times(list(map(_TIMESTAMP, messages)), arrival)
    results = validator.parse_many([message.value for message in messages], received)
    return list(zip(messages, results, received, strict=True))


def _first_ids(parsed: Parsed) -> list[tuple[str, int]]:
    """``(transaction_id, offset)`` of the first record of each id among the valid ones."""
    first: dict[str, int] = {}
    for message, result, _ in parsed:
        tx = result.transaction
        if tx is not None and tx.transaction_id not in first:
            first[tx.transaction_id] = message.offset
    return list(first.items())


def _classify(
    parsed: Parsed,
    seen: SeenIds,
    partition: int,
    claimed: dict[str, tuple[str, int, int]] | None = None,
    arrival: float | None = None,
    *,
    at_once: bool = True,
) -> tuple[dict[int, ParsedTransaction], list[FailedMessage], dict[int, float]]:
    """De-duplicate one partition's parsed batch, in offset order; also returns each
    accepted payment's record time (:func:`~pipeline.records.record_time`).

    With ``claimed`` (the ids another record claimed first, from PostgreSQL) that is the
    verdict, whatever the key, partition or record time of either record and however
    long ago; without it, the partition's in-memory ids within the dedupe window. The
    same offset again is a redelivery, not a duplicate. The in-memory ids expire on the
    worker's clock (``arrival``), never on a producer-set record time.

    A batch whose ids nobody claimed first and none of which repeats is classified at
    once (``at_once``, the common case); any other a message at a time.
    """
    if at_once and claimed is not None and not claimed and arrival is not None:
        ok = [(m.offset, r.transaction, t) for m, r, t in parsed if r.transaction is not None]
        ids = [tx.transaction_id for _, tx, _ in ok]
        if len(set(ids)) == len(ids):  # nobody claimed one first, none is here twice
            offsets = [offset for offset, _, _ in ok]
            seen.add_many(partition, ids, offsets, arrival)
            return ({offset: tx for offset, tx, _ in ok}, [
                _failed(m, r.category or ErrorCategory.SCHEMA, r.errors, t)
                for m, r, t in parsed if r.transaction is None],
                {offset: t for offset, _, t in ok})
    accepted: dict[int, ParsedTransaction] = {}
    failed: list[FailedMessage] = []
    times: dict[int, float] = {}
    in_batch: dict[str, int] = {}
    for message, result, received in parsed:
        tx = result.transaction
        if tx is None:
            failed.append(_failed(message, result.category or ErrorCategory.SCHEMA,
                                  result.errors, received))
            continue
        tx_id = tx.transaction_id
        now = received if arrival is None else arrival
        first = None if claimed is not None else seen.first_seen(partition, tx_id, now)
        where: tuple[str, int, int] | None = None
        if claimed is not None:
            where = claimed.get(tx_id)
            if where is None and in_batch.get(tx_id, message.offset) != message.offset:
                where = (message.topic, partition, in_batch[tx_id])
        elif first is not None and first != message.offset:
            where = (message.topic, partition, first)
        if where is not None:
            error = ValidationError(
                "transaction_id", "unique",
                f"transaction_id {tx_id!r} was already accepted at "
                f"{where[0]}[{where[1]}]@{where[2]}", repr(tx_id))
            failed.append(_failed(message, ErrorCategory.DUPLICATE, (error,), received,
                                  transaction_id=tx_id))
            continue
        in_batch.setdefault(tx_id, message.offset)
        if first != message.offset:
            # the id alone: no rule reads a customer history here any more (the rules over
            # a customer's payments are judged in PostgreSQL, storage.customer_rules)
            seen.add(partition, tx_id, message.offset, now)
        accepted[message.offset] = tx
        times[message.offset] = received
    return accepted, failed, times


def _history(seen: SeenIds, partition: int) -> History:
    return lambda customer: seen.history(partition, customer)


def _failed(message: Record, category: ErrorCategory,
            errors: tuple[ValidationError, ...], received: float,
            transaction_id: str | None = None) -> FailedMessage:
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
        retry_count=bounded_int(headers.get(RETRY_COUNT_HEADER), 0, INT4_MAX) or 0,
        replay_of=bounded_int(replay_of, 1, INT8_MAX),
        key=message.key,
        transaction_id=transaction_id,
    )


def _headers(message: Record) -> dict[str, bytes]:
    headers: Any = message.headers or {}
    return dict(headers.items() if isinstance(headers, dict) else headers)


def _record_extractor_errors(stats: IngestStats, metrics: BatchMetrics,
                             context: dict[str, Any]) -> None:
    for _, error in metrics.errors:
        if not stats.extractor_errors[error.extractor]:
            log.warning("metric extractor %s failed (the payment and its other "
                        "metrics are kept): %s", error.extractor, error.error,
                        extra=context)
        stats.extractor_errors[error.extractor] += 1


def _record(stats: IngestStats, parsed: Parsed, failed: list[FailedMessage],
            arrival: float, done: float) -> list[float]:
    """Count a batch into the live stats; returns its events' latencies (seconds)."""
    n = len(parsed)
    stats.consumed += n
    stats.failed += len(failed)
    stats.accepted += n - len(failed)
    stats.failed_by_category.update(f.category.value for f in failed)
    stats.batches += 1
    if stats.first_event_at is None:
        stats.first_event_at = arrival
    stats.last_event_at = done
    # record times as _parse judged them: producer-set times outside the plausible range
    # (replaced by the arrival time there) would skew the latency figures
    stamps = [t for m, _, t in parsed if m.timestamp and t == m.timestamp]
    latencies = [done - t for t in stamps]
    stats.latencies.extend(latencies)
    stats.fetch_latencies.extend(arrival - t for t in stamps)
    return latencies
