"""Property: for any sequence of deliveries, crashes and redeliveries, PostgreSQL and
the Parquet lake end up holding each message exactly once.

A model of the sink protocol (agents/sinks.py) for one partition, on the real database
and a local lake: each delivery is written to PostgreSQL, then buffered for the lake; a
flush writes the lake files and the group then commits; a crash loses the process (its
buffers, its writer) at any of those points, and the next process resumes from the
last committed offset, so everything after it is delivered again, in batches cut
differently.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from models.events import FailedMessage
from pipeline.batches import SinkBatch
from simulator.generator import PaymentGenerator, load_scenario
from storage.parquet import RawEventWriter
from storage.postgres import PostgresSink, create_db_engine
from tests.helpers import execute, query, read_lake, shipped_config

N = 60
START = datetime(2026, 2, 1, 10, 0, tzinfo=UTC)
EVENTS = list(PaymentGenerator(load_scenario(), seed=61, invalid_ratio=0.15, start=START)
              .events(N))


@dataclass
class Msg:
    offset: int
    value: bytes
    key: bytes | None
    timestamp: float
    topic: str = "payments"
    partition: int = 0


MESSAGES = [Msg(i, e.value, e.key, START.timestamp() + i) for i, e in enumerate(EVENTS)]

# a step: ("deliver", k) fetches the next k messages; ("flush", commit?) writes the lake
# files and, if asked, commits everything flushed so far; ("crash",) loses the process
steps = st.lists(st.one_of(
    st.tuples(st.just("deliver"), st.integers(1, 17)),
    st.tuples(st.just("flush"), st.booleans()),
    st.tuples(st.just("crash")),
), max_size=25)


def batch_of(messages: list[Msg]) -> SinkBatch:
    validator = shipped_config().validator
    payments, failed = {}, []
    for m in messages:
        result = validator.parse(m.value, m.timestamp)
        if result.transaction is not None:
            payments[m.offset] = result.transaction
        else:
            failed.append(FailedMessage(m.value, result.category, result.errors, m.topic,
                                        m.partition, m.offset, datetime.now(UTC), key=m.key))
    return SinkBatch("payments", 0, messages, payments, failed, [], time.time())


def run(plan: list[tuple], database_url: str, lake_dir: str) -> None:
    sink = PostgresSink(create_db_engine(database_url))
    committed = 0

    def new_process() -> tuple[RawEventWriter, int]:
        return RawEventWriter(lake_dir, flush_rows=10**9, flush_seconds=10**9), committed

    lake, position = new_process()
    flushed_to = committed  # acked (flushed) up to here, maybe not yet committed
    for step in [*plan, ("deliver", N), ("flush", True)]:
        if step[0] == "deliver":
            messages = MESSAGES[position:position + step[1]]
            if not messages:
                continue
            batch = batch_of(messages)
            sink.write([batch])  # PostgreSQL first ...
            lake.append(batch)  # ... then the lake's buffer
            position = messages[-1].offset + 1
        elif step[0] == "flush":
            flushed = lake.flush("payments", 0)
            if flushed is not None:
                flushed_to = flushed.last_offset + 1
            # a commit covers every acked offset, also those of an earlier flush whose
            # own commit did not happen (the sink acks them; Faust commits them later)
            if step[1] and flushed_to > committed:
                committed = flushed_to
        else:
            lake, position = new_process()
            flushed_to = committed
    assert committed == N


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=steps)
@example(plan=[("deliver", 1), ("deliver", 8), ("deliver", 17), ("deliver", 17),
               ("deliver", 17), ("flush", False)])  # a flush whose commit comes later
def test_each_message_once_in_postgres_and_the_lake(database_url, plan):
    execute(database_url, "TRUNCATE normalized_transactions, failed_items, dynamic_metrics")
    with tempfile.TemporaryDirectory() as lake_dir:
        run(plan, database_url, lake_dir)
        accepted = query(database_url, "SELECT source_offset FROM normalized_transactions")
        failed = query(database_url, "SELECT source_offset FROM failed_items")
        offsets = sorted(r[0] for r in accepted + failed)
        assert offsets == list(range(N))
        assert len(failed) == sum(e.kind != "valid" for e in EVENTS) > 0
        table = read_lake(lake_dir).select(["offset", "value"])
        assert sorted(table["offset"].to_pylist()) == list(range(N))
        assert sorted(table["value"].to_pylist()) == sorted(m.value for m in MESSAGES)
