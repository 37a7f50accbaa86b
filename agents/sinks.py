"""The sink service: PostgreSQL, then Parquet, then the commit.

Receives :class:`~pipeline.batches.SinkBatch` objects from the ingest handler
through a queue bounded in events (a full queue stops the fetch loop:
back-pressure), and for each one, in order:

1. writes transactions, failed items and window counts to PostgreSQL in one
   transaction (every batch waiting in the queue is merged into it, so the
   sink writes larger transactions exactly when it falls behind);
2. adds the batch to its partition's Parquet buffer;
3. when a buffer is due (size or age), one a round so the queue is stored between
   two flushes, writes its files,
   writes the partition's cached window values to the tables, their windowed
   metrics to PostgreSQL (``histogram_partials``, ``aggregate_histograms``),
   flushes the producer (changelog and DLQ records) and commits the offsets.

So an offset is committed only after everything it produced is durable.
The producer flush and the commit are bounded by ``commit_timeout``: a Kafka client
that never completes a request (seen with aiokafka across a broker restart) would
otherwise hold every partition still while the process looks alive. Past the bound
the worker exits with status 2 and its supervisor (Kubernetes, systemd) starts it
again; it reads again from its last commit.
Blocking I/O runs in worker threads; a write that fails every retry crashes
the worker (infrastructure failures are not turned into data).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

from mode import Service

from pipeline.batches import SinkBatch
from pipeline.windows import HistogramPartials
from runtime.batching import BatchConsumer
from runtime.faust_app import PaymentApp
from runtime.kafka_state import client_state
from runtime.telemetry import Telemetry
from storage.parquet import RawEventWriter
from storage.postgres import PostgresSink
from tables.cache import TableCache

log = logging.getLogger(__name__)
T = TypeVar("T")


class FlushedWindows(TableCache, Protocol):
    """The window state as the sinks see it (:class:`tables.payments.WindowState`)."""

    def take_partials(self, partition: int) -> HistogramPartials: ...


class SinkService(Service):
    """Makes batches durable and commits their offsets; one per worker."""

    def __init__(self, app: PaymentApp, db: PostgresSink, lake: RawEventWriter,
                 windows: FlushedWindows, seen: TableCache, telemetry: Telemetry | None = None,
                 *, max_events: int = 50_000, linger: float = 0.2,
                 commit_timeout: float = 120.0, handover_timeout: float = 15.0,
                 handover_limit: float = 45.0,
                 on_stuck: Callable[[str], None] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.db = db
        self.lake = lake
        self.windows = windows
        self.caches: list[TableCache] = [windows, seen]
        self.telemetry = telemetry or Telemetry()
        self.busy_since: float | None = None  # time.monotonic() a store or flush began
        self.max_events = max_events
        self.linger = linger
        self.commit_timeout = commit_timeout
        self.handover_timeout = handover_timeout
        self.handover_limit = handover_limit
        self.on_stuck = on_stuck  # the worker's exits the process (app.cli.fail)
        self._queue: list[SinkBatch] = []
        self._queued_events = 0
        self._changed = asyncio.Condition()
        self._lock = asyncio.Lock()
        self.rows_written: Counter[str] = Counter()
        self.files_written = 0
        self.commits = 0
        self.committed_offsets: dict[int, int] = {}  # partition -> offset we committed
        self._epochs: dict[int, int] = {}  # partition -> revocations so far (epoch())
        # partition -> time.time() of its last commit here, or of its assignment
        self.last_commit_at: dict[int, float] = {}

    def epoch(self, partition: int) -> int:
        """How often ``partition`` was revoked from this worker: a batch made before the
        last revocation (its handler began earlier, then waited) is stale."""
        return self._epochs.get(partition, 0)

    async def put(self, batch: SinkBatch) -> bool:
        """Queue a batch; waits while ``max_events`` events are already queued. A batch of
        a partition revoked since its handler began is dropped (returns False): its
        records are read again from the last commit. Queued after the revocation, it would
        start the partition's buffers past records that are read again and then skipped,
        and the commit after it would pass over them."""
        n = len(batch.messages)
        async with self._changed:
            await self._changed.wait_for(
                lambda: not self._queue or self._queued_events + n <= self.max_events)
            if batch.epoch != self.epoch(batch.partition):
                log.info("dropped a batch of %s[%d] at %d-%d fetched before the partition "
                         "was revoked; it is read again from the last commit", batch.topic,
                         batch.partition, batch.first_offset, batch.last_offset)
                return False
            self._queue.append(batch)
            self._queued_events += n
            self._changed.notify_all()
        return True

    @Service.task
    async def _run(self) -> None:
        while not self.should_stop:
            timeout = self.lake.seconds_until_due()
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait_for(lambda: bool(self._queue)),
                                           1.0 if timeout is None else timeout)
            if self.linger and self._queued_events < self.max_events // 2:
                # gather a few batches into one transaction (fewer commits, less CPU)
                await asyncio.sleep(self.linger)
            async with self._lock:
                self.busy_since = time.monotonic()
                try:
                    batches = await self._drain_queue()
                    if batches:
                        await self._store(batches)
                    # One due buffer a round (they come round in turn): the queue is
                    # stored between two flushes. Flushing every due partition back to
                    # back (0.1-0.4 s each) let the queue fill and held the fetch loop
                    # up for a second at 5,000 events/s.
                    due = self.lake.due()
                    if due:
                        await self._flush(*due[0])
                finally:
                    self.busy_since = None

    async def _drain_queue(self) -> list[SinkBatch]:
        async with self._changed:
            batches, self._queue = self._queue, []
            self._queued_events = 0
            self._changed.notify_all()
        return batches

    async def _store(self, batches: list[SinkBatch]) -> None:
        with self.telemetry.sink_seconds.labels("postgres").time():
            counts = await asyncio.to_thread(self._store_blocking, batches)
        self.rows_written.update(counts)

    def _store_blocking(self, batches: list[SinkBatch]) -> dict[str, int]:
        """Write ``batches`` to PostgreSQL, then add them to the lake's buffers (their
        Arrow columns are made there: in this thread, not on the event loop, where the
        batches a slow write let gather held the fetch loop up for tens of ms). The lake
        buffers are touched only under the sink's lock, one step at a time."""
        counts = self.db.write(batches)
        self.lake.append_many(batches)
        return counts

    async def _flush(self, topic: str, partition: int) -> None:
        with self.telemetry.sink_seconds.labels("parquet").time():
            flushed = await asyncio.to_thread(self.lake.flush, topic, partition)
        if flushed is None:
            return
        self.files_written += 1 if flushed.written else 0  # Delta commits
        self.rows_written["parquet"] += flushed.rows
        # table values (window counts, seen ids) for these offsets go to the
        # changelog before the commit
        for cache in self.caches:
            cache.flush(partition, flushed.last_message)
        partials = self.windows.take_partials(partition)  # snapshotted here, on the loop
        if partials:
            with self.telemetry.sink_seconds.labels("windows").time():
                written = await asyncio.to_thread(self.db.write_windows, partials)
            self.rows_written.update(written)
        commit_started = time.perf_counter()
        await self._bounded(self.app.producer.flush(),
                            "the producer's flush (changelog and DLQ records)", topic, partition)
        # The batch path hands this partition's records over contiguously from its
        # committed offset (runtime.batching.Positions), and they are flushed in order:
        # everything before the flush's end is durable.
        tp = flushed.last_message.tp
        consumer = cast(BatchConsumer, self.app.consumer)
        done = await self._bounded(consumer.commit_durable(tp, flushed.last_offset + 1),
                                   "the offset commit", topic, partition)
        committed = flushed.last_offset + 1 if done else None
        self.telemetry.sink_seconds.labels("commit").observe(time.perf_counter() - commit_started)
        context = {"topic": topic, "partition": partition,
                   "offsets": f"{flushed.first_offset}-{flushed.last_offset}",
                   "batch_size": flushed.rows}
        if committed:
            log.debug("committed %s[%d] up to %d", topic, partition, committed, extra=context)
            self.commits += 1
            self.committed_offsets[partition] = committed
            self.last_commit_at[partition] = time.time()
        else:
            # revoked meanwhile: the next owner reads these records again, and the
            # lake's Delta transaction for the partition makes it skip what is written
            log.warning("commit of %s[%d] up to %d not done yet", topic, partition,
                        flushed.last_offset + 1, extra=context)

    async def _bounded(self, step: Awaitable[T], what: str, topic: str, partition: int) -> T:
        """``step``, or the process exits (``on_stuck``) when it outlasts the bound."""
        try:
            return await asyncio.wait_for(step, self.commit_timeout)
        except TimeoutError:
            message = (f"{what} for {topic}[{partition}] did not finish within "
                       f"{self.commit_timeout:.0f} s (COMMIT_TIMEOUT_S): the Kafka client is "
                       "stuck; exiting for the supervisor to restart the worker, which reads "
                       "again from its last commit")
            log.critical(message)
            # for a hang of a kind not known yet (ADR 0012 fixed one): what it waited on
            log.critical("the Kafka clients when the worker gave up on them: %s",
                         json.dumps(client_state(self.app), default=str))
            if self.on_stuck is not None:
                self.on_stuck(message)
            raise

    async def flush_all(self) -> None:
        """Store what is queued and flush every buffer (shutdown, tests)."""
        async with self._lock:
            await self._store_and_flush()

    async def on_revoked(self, revoked: set) -> None:
        """Hand revoked partitions over: store what is queued, flush their buffers and
        commit them, then drop what is left, which their next owner reads again.

        Runs in the rebalance, before the group moves on (Kafka's ``onPartitionsRevoked``
        pattern): the next owner starts after this commit and recovers the tables after
        this producer flush. Taken under the lock, so a flush in progress finishes first.

        Nothing is cancelled half-way. A write runs in a thread, which no cancellation
        stops: a hand-over cut short by a timeout used to let the partition go while its
        lake files were still being written (the next owner's files then overlap them),
        and to drop queued batches of the partitions this worker keeps, whose rows then
        never reached the lake. So:

        - the queued batches are always stored; a store that fails every retry ends the
          worker, as it does outside a rebalance;
        - revoked partitions are flushed one after another until ``handover_timeout``;
          those not reached by then, or whose flush fails, go uncommitted;
        - a step still running at ``handover_limit`` (below the group's rebalance
          timeout, after which the group gives the partitions to others) ends the process:
          the only way to stop its thread before the next owner starts writing.
        """
        gone = {(tp.topic, tp.partition) for tp in revoked}
        for tp in revoked:  # at once, before any wait: a handler's put() checks it
            self._epochs[tp.partition] = self.epoch(tp.partition) + 1
        names = sorted(p for _, p in gone)
        async with self._lock:
            started = time.monotonic()
            work = asyncio.ensure_future(self._hand_over(gone, started + self.handover_timeout))
            try:
                let_go = await asyncio.wait_for(asyncio.shield(work), self.handover_limit)
            except TimeoutError:
                self._give_up(f"the hand-over of revoked partitions {names} did not finish "
                              f"within {self.handover_limit:.0f} s; exiting so that none of "
                              "its writes can land after their next owner starts")
                raise
            except Exception as exc:
                self._give_up(f"storing the queued batches failed in the hand-over of "
                              f"{names} ({type(exc).__name__}: {exc})")
                raise
            if let_go:
                log.warning("revoked partitions %s let go uncommitted: their next owner "
                            "reads them again from their last commit", let_go)
            log.info("handed over %s in %.2f s", names, time.monotonic() - started)
            async with self._changed:
                self._queue = [b for b in self._queue if (b.topic, b.partition) not in gone]
                self._queued_events = sum(len(b.messages) for b in self._queue)
                self._changed.notify_all()
            for tp in revoked:
                self.last_commit_at.pop(tp.partition, None)
                self.lake.forget(tp.topic, tp.partition)
                for cache in self.caches:
                    cache.forget(tp.partition)

    async def _hand_over(self, gone: set[tuple[str, int]], until: float) -> list[int]:
        """Store every queued batch, then flush and commit the buffers of ``gone`` while
        the time is before ``until``; returns the partitions let go uncommitted."""
        batches = await self._drain_queue()
        if batches:
            await self._store(batches)
        let_go = []
        for topic, partition in self.lake.buffered():
            if (topic, partition) not in gone:
                continue
            if time.monotonic() >= until:
                let_go.append(partition)
                continue
            try:
                await self._flush(topic, partition)
            except Exception as exc:  # noqa: BLE001 - the next owner reads them again
                log.warning("flushing revoked %s[%d] failed (%s: %s)", topic, partition,
                            type(exc).__name__, exc)
                let_go.append(partition)
        return let_go

    def _give_up(self, message: str) -> None:
        log.critical(message)
        if self.on_stuck is not None:
            self.on_stuck(message)

    async def _store_and_flush(self) -> None:
        """Store every queued batch, then flush every buffer and commit it. The caller
        holds the lock."""
        batches = await self._drain_queue()
        if batches:
            await self._store(batches)
        for key in self.lake.buffered():
            await self._flush(*key)

    def on_assigned(self, assigned: set) -> None:
        """A rebalance ended: the partitions' commits are timed from now (their committed
        offset came with the assignment)."""
        self.telemetry.rebalances.inc()
        now = time.time()
        for tp in assigned:
            self.last_commit_at.setdefault(tp.partition, now)

    async def on_stop(self) -> None:
        try:
            await self.flush_all()
        except Exception:  # the offsets stay uncommitted: replayed at next start
            log.exception("final sink flush failed; uncommitted batches will be replayed")
