"""A rolling restart, as a StatefulSet rollout does it: three workers, each stopped with
SIGTERM and started again in turn, while 3,000 payments/s flow. The end state must be
exact; the test reports the longest time a partition's committed offset stood still
while records waited for it (docs/operations.md, "Rolling restarts")."""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from simulator.generator import PaymentGenerator, load_scenario
from simulator.producer import ensure_topic, produce
from storage.broker import connection
from tests.helpers import assert_end_state

START = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)
RATE = 3000


class Sender(threading.Thread):
    """Sends payments at ``RATE``/s until told to stop, then ``tail`` more; keeps them."""

    def __init__(self, stack, tail: int) -> None:
        super().__init__(daemon=True)
        self.stack, self.tail = stack, tail
        self.sent: list = []
        self.error: BaseException | None = None
        self._done = threading.Event()

    def finish(self) -> None:
        self._done.set()

    def _wanted(self):
        stop_after = None
        events = PaymentGenerator(load_scenario(), seed=91, invalid_ratio=0.03,
                                  start=START).events(10**7)
        for i, event in enumerate(events):
            if self._done.is_set() and stop_after is None:
                stop_after = i + self.tail
            if stop_after is not None and i >= stop_after:
                return
            self.sent.append(event)
            yield event

    def run(self) -> None:
        try:
            boot = self.stack.broker.bootstrap
            asyncio.run(ensure_topic(boot, "payments", self.stack.partitions))
            asyncio.run(produce(self._wanted(), broker=boot, topic="payments",
                                total=0, rate=RATE, progress=False))
        except BaseException as exc:  # reported by the test
            self.error = exc


class StallWatch(threading.Thread):
    """Polls each partition's committed and end offsets; keeps the longest time a
    committed offset stood still while records waited behind it."""

    def __init__(self, stack) -> None:
        super().__init__(daemon=True)
        self.stack = stack
        self.longest: dict[int, float] = {}
        self._done = threading.Event()

    def finish(self) -> None:
        self._done.set()
        self.join(30)

    def run(self) -> None:
        asyncio.run(self._watch())

    async def _watch(self) -> None:
        consumer = AIOKafkaConsumer(**connection(self.stack.broker.bootstrap).client_kwargs(
            group_id=self.stack.app_id, enable_auto_commit=False))
        await consumer.start()
        tps = [TopicPartition("payments", p) for p in range(self.stack.partitions)]
        last: dict[int, tuple[int, float]] = {}  # partition -> (committed, since)
        try:
            while not self._done.is_set():
                ends = await consumer.end_offsets(tps)
                now = time.monotonic()
                for tp in tps:
                    committed = await consumer.committed(tp) or 0
                    before = last.get(tp.partition)
                    if before is None or committed != before[0] or committed >= ends[tp]:
                        last[tp.partition] = (committed, now)
                    else:
                        waited = now - before[1]
                        self.longest[tp.partition] = max(self.longest.get(tp.partition, 0.0),
                                                         waited)
                await asyncio.sleep(0.2)
        finally:
            await consumer.stop()


def wait_until(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def owned(worker) -> set[str]:
    try:
        return {tp for tp in worker.stats()["assigned"] if tp.startswith("payments[")}
    except OSError:
        return set()


def test_rolling_restart_of_three_workers_under_load_is_exact(stack):
    names = ["w1", "w2", "w3"]
    workers = {n: stack.start_worker(n, PARQUET_FLUSH_SECONDS="1") for n in names}
    everything = {f"payments[{p}]" for p in range(stack.partitions)}

    def settled() -> bool:
        held = [owned(w) for w in workers.values()]
        return all(held) and set().union(*held) == everything and \
            sum(len(h) for h in held) == len(everything)

    sender = Sender(stack, tail=6_000)
    watch = StallWatch(stack)
    sender.start()
    watch.start()
    try:
        wait_until(settled, "the three workers never shared the partitions")
        for name in names:  # one at a time, as a StatefulSet rollout
            consumed_before = stack.committed_and_end()[0]
            workers[name].stop()  # SIGTERM: flush, commit, leave the group
            assert workers[name].proc.returncode == 0, f"{name} did not stop cleanly"
            workers[name] = stack.start_worker(name, PARQUET_FLUSH_SECONDS="1")
            wait_until(settled, f"the partitions never settled after {name} restarted")
            wait_until(lambda b=consumed_before: stack.committed_and_end()[0] > b + 3_000,
                       f"no progress after {name} restarted")
        sender.finish()
        sender.join()
        assert sender.error is None, sender.error
        stack.wait_until_committed(len(sender.sent), timeout=300)
    finally:
        sender.finish()
        watch.finish()
    sent = sender.sent
    print(f"rolling restart: {len(sent):,} events at {RATE}/s; longest wait of a partition's "
          f"commit while records waited: {max(watch.longest.values(), default=0.0):.1f} s "
          f"({', '.join(f'p{p} {s:.1f} s' for p, s in sorted(watch.longest.items()))})")
    assert len(sent) > 3 * 3_000
    assert all(w.alive() and owned(w) for w in workers.values())
    assert_end_state(stack, sent)
