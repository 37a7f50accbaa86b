"""The sink service's order: PostgreSQL, then the lake, then table values, window rows
and the producer, and only then the commit. A failure on the way commits nothing."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
from faust.types import TP

from agents.sinks import SinkService
from pipeline.batches import SinkBatch
from pipeline.windows import HistogramPartials, WindowMetrics
from storage.parquet import Flushed


class Log(list):
    def __call__(self, *event):
        self.append(event)


def messages(partition: int, first: int, n: int) -> list:
    return [SimpleNamespace(tp=TP("payments", partition), partition=partition,
                            offset=first + i) for i in range(n)]


class FakeLake:
    def __init__(self, log: Log) -> None:
        self.log = log
        self.batches: list[SinkBatch] = []

    def append_many(self, batches):
        for batch in batches:
            self.log("lake.append", batch.partition)
            self.batches.append(batch)

    def flush(self, topic, partition):
        self.log("lake.flush", partition)
        msgs = [m for b in self.batches if b.partition == partition for m in b.messages]
        self.batches = [b for b in self.batches if b.partition != partition]
        return Flushed(topic, partition, msgs[0].offset, msgs[-1].offset, len(msgs), len(msgs),
                       msgs[-1])

    def due(self):
        return []

    def buffered(self):
        return sorted({("payments", b.partition) for b in self.batches})

    def forget(self, topic, partition):
        self.log("lake.forget", partition)

    def seconds_until_due(self):
        return None


class FakeState:
    def __init__(self, log: Log, name: str, partials: HistogramPartials | None = None):
        self.log, self.name, self.partials = log, name, partials

    def flush(self, partition, message):
        self.log(f"{self.name}.flush", partition, message.offset)
        return 1

    def forget(self, partition):
        self.log(f"{self.name}.forget", partition)

    def take_partials(self, partition):
        return self.partials or HistogramPartials()


def service(log: Log, *, commit_ok: bool = True, windows_fail: bool = False) -> SinkService:
    async def commit(tp, offset):
        log("commit", tp.partition, offset)
        return commit_ok

    async def producer_flush():
        log("producer.flush")

    def write_windows(partials):
        log("db.write_windows", len(partials))
        if windows_fail:
            raise RuntimeError("PostgreSQL went away for good")
        return {"histogram_partials": len(partials)}

    app = SimpleNamespace(
        consumer=SimpleNamespace(commit_durable=commit),
        producer=SimpleNamespace(flush=producer_flush))
    db = SimpleNamespace(write=lambda batches: log("db.write", len(batches)) or {},
                         write_windows=write_windows)
    value = WindowMetrics(last_offset=11)
    partials = HistogramPartials()
    partials.add(300, 1_800_000_000, 3, value)  # an empty value: no rows
    return SinkService(app, db, FakeLake(log), FakeState(log, "windows", partials),
                       FakeState(log, "seen"), linger=0)


def batch(partition: int, first: int, n: int) -> SinkBatch:
    return SinkBatch("payments", partition, messages(partition, first, n), {}, [], [], 0.0)


def run(sinks: SinkService, *batches: SinkBatch) -> None:
    async def go():
        await sinks._store(list(batches))
        await sinks._flush("payments", 3)

    asyncio.run(go())


def test_everything_is_durable_before_the_commit():
    log = Log()
    sinks = service(log)
    run(sinks, batch(3, 10, 2))
    names = [e[0] for e in log]
    assert names == ["db.write", "lake.append", "lake.flush", "windows.flush", "seen.flush",
                     "producer.flush", "commit"]
    assert ("commit", 3, 12) in log  # the next offset to read: one past the flush
    assert ("windows.flush", 3, 11) in log  # in the context of the flush's last message
    assert sinks.committed_offsets == {3: 12} and sinks.commits == 1


def test_window_rows_are_written_before_the_commit():
    log = Log()
    sinks = service(log)
    sinks.windows.partials.rows.append(("row",))  # type: ignore[attr-defined]
    run(sinks, batch(3, 0, 1))
    names = [e[0] for e in log]
    assert names.index("db.write_windows") < names.index("producer.flush") < names.index("commit")


def test_a_failed_window_write_commits_nothing():
    log = Log()
    sinks = service(log, windows_fail=True)
    sinks.windows.partials.rows.append(("row",))  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="went away"):
        run(sinks, batch(3, 0, 4))
    assert not [e for e in log if e[0] == "commit"]
    assert sinks.committed_offsets == {}


def test_a_commit_not_done_leaves_the_offsets_unrecorded():
    log = Log()
    sinks = service(log, commit_ok=False)
    run(sinks, batch(3, 0, 3))
    assert [e[0] for e in log][-2:] == ["producer.flush", "commit"]
    assert sinks.committed_offsets == {} and sinks.commits == 0


@pytest.mark.parametrize("stuck", ["producer.flush", "commit"])
def test_a_kafka_step_that_never_finishes_ends_the_process_not_the_partition(stuck):
    """A Kafka client that never answers (aiokafka across a broker restart) must not hold
    every partition still behind a live process: past COMMIT_TIMEOUT_S the worker exits
    (``on_stuck``) for its supervisor to restart it, and nothing is committed."""
    log = Log()
    sinks = service(log)
    never = asyncio.Event()

    async def hang(*args):
        log(stuck)
        await never.wait()

    if stuck == "commit":
        sinks.app.consumer.commit_durable = hang
    else:
        sinks.app.producer.flush = hang
    exits: list[str] = []
    sinks.commit_timeout = 0.05
    sinks.on_stuck = exits.append
    with pytest.raises(TimeoutError):
        run(sinks, batch(3, 0, 2))
    what = "the offset commit" if stuck == "commit" else "the producer's flush"
    assert len(exits) == 1 and exits[0].startswith(f"{what}") and "payments[3]" in exits[0]
    assert "COMMIT_TIMEOUT_S" in exits[0]
    assert sinks.commits == 0 and sinks.committed_offsets == {}


def test_a_batch_made_before_its_partition_was_revoked_is_dropped_not_queued():
    """A handler that waited (a full queue, the duplicate check) while its partition was
    revoked must not queue its batch afterwards: the partition's buffers would start past
    records that are read again and skipped, and the next commit would pass over them."""
    log = Log()
    sinks = service(log)

    async def go() -> list:
        early = batch(3, 10, 2)
        early.epoch = sinks.epoch(3)
        other = batch(1, 0, 1)
        other.epoch = sinks.epoch(1)
        await sinks.on_revoked({TP("payments", 3)})
        fresh = batch(3, 0, 2)
        fresh.epoch = sinks.epoch(3)
        return [await sinks.put(early), await sinks.put(other), await sinks.put(fresh)]

    assert asyncio.run(go()) == [False, True, True]
    assert [(b.partition, b.first_offset) for b in sinks._queue] == [(1, 0), (3, 0)]
    assert sinks.epoch(3) == 1 and sinks.epoch(1) == 0


def test_a_revoked_partition_is_stored_flushed_and_committed_before_it_goes():
    """Kafka's onPartitionsRevoked pattern: what this worker took of a revoked partition
    is made durable and committed in the rebalance, so its next owner starts after it."""
    log = Log()
    sinks = service(log)

    async def go() -> None:
        for b in (batch(3, 10, 2), batch(1, 0, 1), batch(3, 12, 3)):
            b.epoch = sinks.epoch(b.partition)
            assert await sinks.put(b)
        await sinks.on_revoked({TP("payments", 3)})

    asyncio.run(go())
    names = [e[0] for e in log]
    assert names[:2] == ["db.write", "lake.append"]  # every queued batch, in one write
    assert ("commit", 3, 15) in log and sinks.committed_offsets == {3: 15}
    assert names.index("producer.flush") < names.index("commit") < names.index("lake.forget")
    assert not [e for e in log if e[0] == "commit" and e[1] == 1]  # still ours: later
    assert [b.partition for b in sinks.lake.batches] == [1] and sinks._queue == []


def test_a_hand_over_that_fails_lets_the_partition_go_uncommitted():
    log = Log()
    sinks = service(log, windows_fail=True)
    sinks.windows.partials.rows.append(("row",))  # type: ignore[attr-defined]

    async def go() -> None:
        b = batch(3, 0, 2)
        assert await sinks.put(b)
        await sinks.on_revoked({TP("payments", 3)})

    asyncio.run(go())
    assert "commit" not in [e[0] for e in log] and sinks.committed_offsets == {}
    assert ("lake.forget", 3) in log and sinks.epoch(3) == 1


def test_a_slow_hand_over_waits_for_its_write_and_lets_only_the_rest_go(monkeypatch):
    """A write runs in a thread that no timeout stops: past ``handover_timeout`` the
    hand-over must still wait for the flush in progress (letting the partition go with
    its files half written makes them overlap the next owner's), and only the revoked
    partitions not yet reached go uncommitted."""
    import threading
    import time

    import agents.sinks

    clock = [1000.0]  # the hand-over's deadline reads this clock; the first flush moves it
    monkeypatch.setattr(agents.sinks, "time", SimpleNamespace(
        monotonic=lambda: clock[0], time=time.time, perf_counter=time.perf_counter))
    log = Log()
    sinks = service(log)
    sinks.handover_timeout = 0.05  # also short in real time: a timeout must not cut it
    release = threading.Event()
    flush = sinks.lake.flush

    def slow_flush(topic, partition):
        log("lake.flush.start", partition)
        clock[0] += 60
        release.wait(5)
        return flush(topic, partition)

    sinks.lake.flush = slow_flush

    async def go() -> None:
        for b in (batch(2, 0, 2), batch(3, 0, 2), batch(1, 0, 1)):
            b.epoch = sinks.epoch(b.partition)
            assert await sinks.put(b)
        revoking = asyncio.ensure_future(
            sinks.on_revoked({TP("payments", 2), TP("payments", 3)}))
        while ("lake.flush.start", 2) not in log:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # well past handover_timeout
        assert not revoking.done() and ("lake.forget", 2) not in log
        release.set()
        await revoking

    asyncio.run(go())
    assert ("commit", 2, 2) in log  # the flush in progress finished and was committed
    assert ("lake.flush.start", 3) not in log  # reached after the deadline: let go
    assert not [e for e in log if e[0] == "commit" and e[1] == 3]
    assert ("lake.forget", 3) in log and sorted(b.partition for b in sinks.lake.batches) == [1, 3]


def test_a_hand_over_past_its_limit_ends_the_process():
    """Still writing when the group would give the partitions to others: the process
    exits (``on_stuck``), the only way to stop a thread before the next owner writes."""
    import threading

    log = Log()
    sinks = service(log)
    sinks.handover_limit = 0.1
    exits: list[str] = []
    sinks.on_stuck = exits.append
    release = threading.Event()
    sinks.lake.flush = lambda topic, partition: release.wait(5)

    async def go() -> None:
        b = batch(3, 0, 2)
        assert await sinks.put(b)
        try:
            with pytest.raises(TimeoutError):
                await sinks.on_revoked({TP("payments", 3)})
        finally:
            release.set()

    asyncio.run(go())
    assert len(exits) == 1 and "did not finish within" in exits[0] and "[3]" in exits[0]
    assert ("lake.forget", 3) not in log and "commit" not in [e[0] for e in log]


def test_a_store_that_fails_in_a_hand_over_ends_the_process_and_drops_nothing_kept():
    """The queued batches of every partition are drained into one store: were its failure
    swallowed, the batches of the partitions this worker keeps would be gone from the
    queue and their rows would never reach the lake, while later batches are committed."""
    log = Log()
    sinks = service(log)
    exits: list[str] = []
    sinks.on_stuck = exits.append

    def fail(batches):
        raise RuntimeError("PostgreSQL went away for good")

    sinks.db.write = fail

    async def go() -> None:
        for b in (batch(3, 0, 2), batch(1, 0, 1)):
            assert await sinks.put(b)
        with pytest.raises(RuntimeError, match="went away"):
            await sinks.on_revoked({TP("payments", 3)})

    asyncio.run(go())
    assert len(exits) == 1 and "storing the queued batches failed" in exits[0]
    assert "lake.append" not in [e[0] for e in log] and ("lake.forget", 3) not in log
