"""The batch path: whole fetches go to a batch handler instead of one event at a time.

Faust's stock consumer hands every message to ``Conductor.on_message`` and from
there through a channel queue, a ``Stream`` and an agent; measured here that
machinery caps a worker at 5,500-6,000 events/s before any work is done (see
``docs/adr/0001-batch-path.md``). For topics registered with
:meth:`PaymentApp.batch_handler` this module replaces only the last hop: the
drain loop groups each fetch by topic-partition and awaits the handler once per
partition batch, as soon as the fetch arrives (no waiting to fill a batch, so
latency stays low at low rates and batches grow by themselves under load).

Everything else stays Faust's: partition assignment and rebalancing, the
changelog topics and their recovery (those messages still go through the stock
per-message callback), offsets and commits (handlers ack what they made
durable), the producer, the web server and ``faust -A app worker``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP, Message
from mode import Service, ServiceT

log = logging.getLogger(__name__)

BatchHandler = Callable[[TP, Sequence[Message]], Awaitable[None]]


class BatchConsumer(aiokafka_driver.Consumer):
    """aiokafka consumer whose drain loop delivers batches for batch topics."""

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        app = cast(Any, self.app)
        handlers: dict[str, BatchHandler] = app.batch_handlers
        empty_pause: float = app.empty_fetch_pause
        callback = self.callback
        to_message = self._to_message
        read_offset = self._read_offset
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        sleep = asyncio.sleep
        monotonic = time.monotonic

        while not (consumer_should_stop() or fetcher_should_stop()):
            self.diag.set_flag(CONSUMER_FETCHING)
            records, active = await self._next_records()
            app.last_fetch_at = monotonic()  # the liveness probe watches these two
            # Yield every fetch: the broker may hand back far more than a fetch
            # size limit would allow, and heartbeats must keep going.
            await sleep(0)
            if self.should_stop:
                break
            if not records:
                if empty_pause:
                    # A broker that answers an empty fetch at once (instead of
                    # long-polling) would otherwise spin this loop hot.
                    await sleep(empty_pause)
                continue
            if not self.flow_active:
                await self.perform_seek()
                continue
            generation = app.consumer_generation_id
            for tp, batch in records.items():
                if not self.flow_active or app.consumer_generation_id != generation:
                    break  # a rebalance started: the rest is fetched again later
                if active is not None and tp not in active and tp not in self._buffered_partitions:
                    continue
                app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                r_offset = read_offset[tp]
                if r_offset is not None and batch and batch[0].offset < r_offset:
                    batch = [record for record in batch if record.offset >= r_offset]
                if not batch:
                    continue
                handler = handlers.get(tp.topic)
                if handler is None:
                    for record in batch:
                        await callback(to_message(tp, record))
                else:
                    expected = batch[0].offset if r_offset is None else r_offset
                    if batch[-1].offset - expected + 1 != len(batch):
                        await self._record_gaps(tp, expected, batch)
                    await handler(tp, [to_message(tp, record) for record in batch])
                    app.last_batch_at = monotonic()
                    if app.consumer_generation_id != generation:
                        # A rebalance ran while the handler waited: the seek reset this
                        # partition's read offset to its committed one, and what the sink
                        # had queued for it was dropped. Moving the read offset past this
                        # batch would skip those records when they are fetched again.
                        break
                read_offset[tp] = batch[-1].offset + 1

    async def _next_records(self) -> tuple[Mapping[TP, list[Any]] | None, set[TP] | None]:
        """The next fetched records, and the partitions they may come from.

        aiokafka's fetcher can lose a partition's buffer while Faust's recovery seeks
        on another thread (``KeyError: TopicPartition`` in ``fetched_records``, seen in
        a rolling restart under load), after it may have moved other partitions'
        positions past records it then never returned. That ended the worker. Instead,
        every partition is sought back to its committed offset: what this worker
        already handled is dropped again by its read offsets, and nothing is skipped.
        """
        try:
            return await self._wait_next_records(timeout=1.0)
        except KeyError as exc:
            lost = exc.args[0] if exc.args else None
            if not (isinstance(lost, tuple) and hasattr(lost, "topic")):  # a (topic, partition)
                raise
            log.warning("the Kafka client lost the fetched records of %s during a "
                        "rebalance; reading every partition again from its committed "
                        "offset", lost)
            await self.perform_seek()
            return {}, None

    async def perform_seek(self) -> None:
        """Seek every partition to its committed offset, and a batch partition that has
        none to its beginning.

        aiokafka's ``seek_to_committed`` leaves a partition with no committed offset where
        it is, and this consumer may have fetched records for it and dropped them
        (fetched while the flow was stopped, or left over when a rebalance began). Left
        there, those records would never be read, and Faust's commit, which takes the
        first run of acked offsets, would pass over them. A partition nobody has committed
        yet is read from its first offset, as ``auto_offset_reset=earliest`` means.
        """
        await super().perform_seek()
        app = cast(Any, self.app)
        handlers = app.batch_handlers
        never = [tp for tp in self.assignment()
                 if tp.topic in handlers and self._read_offset.get(tp) is None]
        if never:
            earliest = await self.earliest_offsets(*never)
            for tp in never:
                await self.seek(tp, earliest.get(tp) or 0)

    async def _record_gaps(self, tp: TP, expected: int, batch: Sequence[Any]) -> None:
        """Mark offsets with no record (transaction markers, compaction) as done.

        Faust commits only contiguous acked offsets; the stock drain loop
        records such gaps per message, this one only when a batch has any.
        """
        for first, last in offset_gaps(expected, [record.offset for record in batch]):
            await self._add_gap(tp, first, last)


def offset_gaps(expected: int, offsets: Sequence[int]) -> list[tuple[int, int]]:
    """The ``(first, last)`` ranges of offsets with no record, from ``expected`` (the
    next offset to read) up to the batch's last offset (``offsets`` ascending)."""
    gaps = []
    previous = expected - 1
    for offset in offsets:
        if offset > previous + 1:
            gaps.append((previous + 1, offset - 1))
        previous = offset
    return gaps


class BatchTransport(aiokafka_driver.Transport):
    """The aiokafka transport with :class:`BatchConsumer` as its consumer."""

    Consumer = BatchConsumer
