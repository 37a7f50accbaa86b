"""The batch path: whole fetches go to a batch handler, and the worker owns the commits.

Faust's stock consumer hands every message to ``Conductor.on_message`` and from
there through a channel queue, a ``Stream`` and an agent; measured here that
machinery caps a worker at 5,500-6,000 events/s before any work is done (see
``docs/adr/0001-batch-path.md``). For topics registered with
:meth:`PaymentApp.batch_handler` this module replaces the last hop: the drain loop
groups each fetch by topic-partition and awaits the handler once per partition
batch, as soon as the fetch arrives (no waiting to fill a batch, so latency stays
low at low rates and batches grow by themselves under load). A topic may also have a
preparer (:meth:`PaymentApp.batch_preparer`), awaited once per fetch with all its
partition batches before the first handler: the ingest handler's duplicate claims go
to PostgreSQL in one round trip a fetch there, not one a partition.

The offsets are this module's, not Faust's acked list (``docs/adr/0010-commits.md``):
:class:`Positions` holds, per partition, the offset the next batch must start at.
It starts at the committed offset when the partition is sought after an assignment
and moves only past batches the handler took. A batch that starts anywhere else is
refused and the partition sought back, so the batches a handler is given are
contiguous from the committed offset, and the sinks commit the end of what they made
durable (:meth:`BatchConsumer.commit_durable`) without any hole behind it.

Everything else stays Faust's: partition assignment and rebalancing, the changelog
topics and their recovery (those messages still go through the stock per-message
callback), the producer, the web server and ``faust -A app worker``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from mode import Service, ServiceT

from models.records import Record

log = logging.getLogger(__name__)

# fn(tp, records) -> True when it took the batch (it will be made durable and
# committed), False when it dropped it (the partition was revoked meanwhile)
BatchHandler = Callable[[TP, Sequence[Record]], Awaitable[bool]]
# fn([(tp, records), ...]): called once per fetch with the batches of its topic that
# the handler will be given next (the same record lists), before any of them
BatchPreparer = Callable[[Sequence[tuple[TP, Sequence[Record]]]], Awaitable[None]]

# How often the drain loop compares the Kafka client's positions with its own
REALIGN_INTERVAL_S = 1.0


class Positions:
    """Per partition, the offset the next batch must start at; pure bookkeeping.

    A partition has a position only while this worker owns it and has sought it:
    :meth:`start` after a seek to the committed offset, :meth:`forget` on revocation.
    Its version changes with every start and forget, so a batch handled across one
    does not move the new position.
    """

    def __init__(self) -> None:
        self._next: dict[TP, int] = {}
        self._versions: Counter[TP] = Counter()
        self._gaps: dict[TP, tuple[int, int]] = {}  # a gap seen once: (from, to)

    def next(self, tp: TP) -> int | None:
        return self._next.get(tp)

    def owned(self) -> set[TP]:
        return set(self._next)

    def version(self, tp: TP) -> int:
        return self._versions[tp]

    def start(self, tp: TP, offset: int) -> None:
        self._next[tp] = offset
        self._versions[tp] += 1
        self._gaps.pop(tp, None)

    def forget(self, tp: TP) -> None:
        self._next.pop(tp, None)
        self._versions[tp] += 1
        self._gaps.pop(tp, None)

    def advance(self, tp: TP, version: int, next_offset: int) -> bool:
        """Move past a batch taken under ``version``; False if the partition was
        sought or revoked meanwhile (its position is the new one)."""
        if self._versions[tp] != version or tp not in self._next:
            return False
        self._next[tp] = next_offset
        self._gaps.pop(tp, None)
        return True

    def confirms_gap(self, tp: TP, first: int) -> bool:
        """A batch starts at ``first``, past the partition's position.

        The first time, it is refused (False): the records in between may have been
        fetched before a seek and dropped, and the partition is read again from its
        position. When the read from the position starts at the same offset again,
        the broker has no record in between (transaction markers, compaction): True.
        """
        gap = (self._next[tp], first)
        if self._gaps.get(tp) == gap:
            return True
        self._gaps[tp] = gap
        return False


class BatchConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's consumer thread, with the fetch's wait from the settings.

    Faust fixes fetch.max.wait.ms at 1.5 s. aiokafka keeps one fetch in flight per broker,
    and a fetch of partitions with nothing new (changelogs while the tables recover, a
    partition at its end) is parked by the broker that long: the other partitions, read
    meanwhile, waited for it (docs/performance.md, "The fetch's wait").
    """

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        settings = cast(Any, self.app).settings
        # read by AIOKafkaConsumer.start(), which hands them to its fetcher
        consumer._fetch_min_bytes = settings.fetch_min_bytes
        consumer._fetch_max_wait_ms = settings.fetch_max_wait_ms
        return consumer


class BatchConsumer(aiokafka_driver.Consumer):
    """aiokafka consumer whose drain loop delivers batches for batch topics and whose
    batch topics' commits follow what the sinks made durable."""

    positions: Positions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.positions = Positions()
        # why fetched records were not handed over since the last batch that was (the
        # liveness probe shows it when the worker stalls)
        self.passed_over: Counter[str] = Counter()

    def _new_consumer_thread(self) -> BatchConsumerThread:
        return BatchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def fetch_state(self) -> dict[str, Any]:
        """The drain loop's state, for the liveness probe's answer when it stalls."""
        def names(tps: Any) -> list[str]:
            return sorted(f"{tp.topic}[{tp.partition}]" for tp in tps or ())
        owned = sorted(self.positions.owned())
        try:  # read from this thread: a snapshot for a person, never acted on
            client = self._client_positions(owned)
        except Exception:  # noqa: BLE001 - the client is not up (or gone)
            client = {}
        return {
            "flow_active": bool(self.flow_active),
            "active": names(self._active_partitions),
            "paused": names(self._paused_partitions),
            "positions": {f"{tp.topic}[{tp.partition}]": self.positions.next(tp)
                          for tp in owned},
            "client_positions": {f"{tp.topic}[{tp.partition}]": at
                                 for tp, at in client.items()},
            "passed_over": dict(self.passed_over),
        }

    async def _seek(self, partition: TP, offset: int) -> None:
        """Seek in the consumer thread.

        Faust calls aiokafka's ``seek`` from the main thread. It sets the partition's
        position and resolves futures of the consumer thread's event loop (uvloop, not
        thread-safe), while that thread's fetcher may be moving the same position past
        the records it is draining, which undoes the seek. Run there, nothing interleaves.
        """
        thread: Any = self._thread
        await thread.call_thread(thread.seek, partition, offset)

    def _client_positions(self, tps: Sequence[TP]) -> dict[TP, int | None]:
        """Where the Kafka client will fetch each of ``tps`` next (None: no position)."""
        thread: Any = self._thread
        consumer = thread._ensure_consumer()
        assignment = consumer._fetcher._subscriptions.subscription.assignment
        out: dict[TP, int | None] = {}
        for tp in tps:
            state = assignment.state_value(tp) if assignment is not None else None
            out[tp] = state.position if state is not None and state.has_valid_position \
                else None
        return out

    async def _realign(self) -> None:
        """Read again every owned batch partition whose Kafka client position is past the
        offset its next batch must start at.

        The client moves a partition's position when it hands records over. Records it
        handed over that never became a batch (fetched for a partition no longer active,
        the rest of a fetch cut by a rebalance, or a fetch whose caller was gone) would
        otherwise be found missing only when the next record of that partition arrives,
        and never on a partition with no more traffic: it stalls with its lag, as it did
        in fresh-clone CI runs (docs/adr/0010-commits.md). The first time it is sought
        back; the same gap seen again after that means the broker has no record in
        between (a transaction marker at the end), and it is left alone.
        """
        owned = sorted(self.positions.owned())
        if not owned:
            return
        thread: Any = self._thread
        client = await thread.call_thread(self._client_positions, owned)
        for tp, at in client.items():
            expected = self.positions.next(tp)
            if at is None or expected is None or at <= expected:
                continue
            if self.positions.confirms_gap(tp, at):
                continue
            log.info("%s: the Kafka client is at %d but the next batch must start at %d: "
                     "reading it again from %d", tp, at, expected, expected)
            self.passed_over[f"{tp.partition}: client past its position"] += 1
            await self.seek(tp, expected)

    async def _drain_messages(self, fetcher: ServiceT) -> None:
        """Faust's fetcher task: the drain loop, ended quietly when the worker stops.

        Stopping cancels the fetcher's task. Faust's fetcher takes a cancellation that
        comes while a rebalance is still running for a rebalance restart: it crashes
        the app, and its restart call fails because no supervisor adopted the fetcher
        (``'NoneType' object has no attribute 'wakeup'``). A SIGTERM in the second
        after a worker joined the group then ended it with exit code 1 (a fresh-clone
        CI run's rolling restart). The fetcher's own stop flag says which it is.
        """
        try:
            await self._drain(fetcher)
        except asyncio.CancelledError:
            if not cast(Service, fetcher)._stopped.is_set():
                raise
            log.info("the worker is stopping: the drain loop ends")

    async def _drain(self, fetcher: ServiceT) -> None:
        app = cast(Any, self.app)
        handlers: dict[str, BatchHandler] = app.batch_handlers
        preparers: dict[str, BatchPreparer] = getattr(app, "batch_preparers", {})
        empty_pause: float = app.empty_fetch_pause
        positions = self.positions
        passed_over = self.passed_over
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        sleep = asyncio.sleep
        monotonic = time.monotonic
        realigned_at = monotonic()

        while not (consumer_should_stop() or fetcher_should_stop()):
            # between fetches, when every record drained so far has been dealt with
            if monotonic() - realigned_at >= REALIGN_INTERVAL_S and self.flow_active:
                realigned_at = monotonic()
                await self._realign()
            self.diag.set_flag(CONSUMER_FETCHING)
            records, active = await self._next_records()
            app.last_fetch_at = monotonic()  # the liveness probe watches these two
            # Yield every fetch: the broker may hand back far more than a fetch
            # size limit would allow, and heartbeats must keep going.
            await sleep(0)
            if self.should_stop:
                break
            if not records:
                passed_over["empty fetch"] += 1
                if empty_pause:
                    # A broker that answers an empty fetch at once (instead of
                    # long-polling) would otherwise spin this loop hot.
                    await sleep(empty_pause)
                continue
            if not self.flow_active:
                passed_over["flow stopped"] += 1
                await self.perform_seek()
                continue
            generation = app.consumer_generation_id
            ready = await self._admit(records, active, generation)
            # one call per topic for the whole fetch (the duplicate claims of every
            # partition in one round trip) before the partitions' handlers, in turn
            for topic, preparer in preparers.items():
                batches = [(tp, messages) for tp, _, _, messages in ready if tp.topic == topic]
                if batches:
                    await preparer(batches)
            for tp, version, expected, messages in ready:
                if not self.flow_active or app.consumer_generation_id != generation:
                    break  # a rebalance started: the rest is fetched again later
                if positions.version(tp) != version:
                    continue  # sought or revoked while the fetch was prepared
                taken = await handlers[tp.topic](tp, messages)
                app.last_batch_at = monotonic()
                passed_over.clear()
                if taken:
                    # False when sought or revoked while it waited: the new position
                    # is where the partition's next batch must start
                    positions.advance(tp, version, messages[-1].offset + 1)
                elif positions.version(tp) == version:
                    await self.seek(tp, expected)  # dropped: read again from the position

    async def _admit(self, records: Mapping[TP, list[Any]], active: set[TP] | None,
                     generation: int) -> list[tuple[TP, int, int, list[Record]]]:
        """The batches of a fetch that start at their partition's position, as
        ``(tp, position version, position, messages)``; records of other topics go to
        Faust's per-message callback, batches that do not fit are dropped or sought."""
        app = cast(Any, self.app)
        handlers: dict[str, BatchHandler] = app.batch_handlers
        positions, passed_over = self.positions, self.passed_over
        ready: list[tuple[TP, int, int, list[Record]]] = []
        for tp, batch in records.items():
            if not self.flow_active or app.consumer_generation_id != generation:
                break  # a rebalance started: the rest is fetched again later
            if active is not None and tp not in active and tp not in self._buffered_partitions:
                passed_over[f"{tp.partition}: not active"] += 1
                continue
            app.monitor.track_tp_end_offset(tp, self.highwater(tp))
            if tp.topic not in handlers:
                for record in batch:
                    await self.callback(self._to_message(tp, record))
                continue
            expected = positions.next(tp)
            if expected is None:  # not sought since its assignment: fetched for nobody
                passed_over[f"{tp.partition}: no position"] += 1
                continue
            if batch and batch[0].offset < expected:
                batch = [record for record in batch if record.offset >= expected]
            if not batch:
                passed_over[f"{tp.partition}: below its position"] += 1
                continue
            if batch[0].offset != expected and not positions.confirms_gap(
                    tp, batch[0].offset):
                log.info("%s starts at %d, not at %d: reading it again from %d",
                         tp, batch[0].offset, expected, expected)
                passed_over[f"{tp.partition}: past its position"] += 1
                await self.seek(tp, expected)
                continue
            ready.append((tp, positions.version(tp), expected, _records(tp, batch, generation)))
        return ready

    async def _next_records(self) -> tuple[Mapping[TP, list[Any]] | None, set[TP] | None]:
        """The next fetched records, and the partitions they may come from.

        aiokafka's fetcher can lose a partition's buffer while Faust's recovery seeks
        on another thread (``KeyError: TopicPartition`` in ``fetched_records``, seen in
        a rolling restart under load), after it may have moved other partitions'
        positions past records it then never returned. That ended the worker. Instead,
        every partition is sought back to where its next batch must start.
        """
        try:
            return await self._wait_next_records(timeout=1.0)
        except KeyError as exc:
            lost = exc.args[0] if exc.args else None
            if not (isinstance(lost, tuple) and hasattr(lost, "topic")):  # a (topic, partition)
                raise
            log.warning("the Kafka client lost the fetched records of %s during a "
                        "rebalance; reading every partition again from its position", lost)
            await self.perform_seek()
            return {}, None

    async def perform_seek(self) -> None:
        """Seek every assigned partition to where its next batch must start.

        A batch partition this worker has owned since its last seek goes back to its
        :class:`Positions` entry (what the handler took is not read twice). Every
        other one goes to its committed offset, or to its first offset when nobody
        committed it yet (``auto_offset_reset=earliest``: aiokafka's
        ``seek_to_committed`` would leave it wherever the client last fetched), and
        its position starts there.
        """
        committed = await self.seek_to_committed()
        known = {tp: offset for tp, offset in committed.items()
                 if offset is not None and offset >= 0}
        self._committed_offset.update(known)  # the lag and the commit metrics read it
        handlers = cast(Any, self.app).batch_handlers
        batch_tps = [tp for tp in self.assignment() if tp.topic in handlers]
        never = [tp for tp in batch_tps
                 if self.positions.next(tp) is None and tp not in known]
        earliest = await self.earliest_offsets(*never) if never else {}
        for tp in batch_tps:
            own = self.positions.next(tp)
            if own is not None:
                await self.seek(tp, own)
                continue
            offset = known[tp] if tp in known else earliest.get(tp) or 0
            if tp not in known:
                await self.seek(tp, offset)
            self.positions.start(tp, offset)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:  # at once: a batch in flight must not move a new position
            self.positions.forget(tp)
        await super().on_partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        for tp in self.positions.owned() - assigned:
            self.positions.forget(tp)
        await super().on_partitions_assigned(assigned, generation_id)

    async def commit_durable(self, tp: TP, offset: int) -> bool:
        """Commit ``offset`` (the next one to read) for ``tp``, whose records before it
        are durable; False when the partition is no longer assigned or the group
        rebalanced meanwhile (its next owner reads them again)."""
        committed = self._committed_offset.get(tp)
        if committed is not None and offset <= committed:
            return True
        return await self._commit_offsets({tp: offset})


def _records(tp: TP, batch: Sequence[Any], generation: int) -> list[Record]:
    """The Kafka client's records of one partition as the batch handler gets them (Faust's
    ``_to_message`` gives the same values: a timestamp in seconds, the generation)."""
    topic, partition = tp
    return [Record(topic, partition, r.offset,
                   None if (ts := r.timestamp) is None else ts / 1000.0, r.timestamp_type,
                   r.headers, r.key, r.value, tp, generation) for r in batch]


class BatchTransport(aiokafka_driver.Transport):
    """The aiokafka transport with :class:`BatchConsumer` as its consumer."""

    Consumer = BatchConsumer
