"""The baseline: a stock Faust agent that only parses each payment (no tables, no sinks).

Run by ``benchmarks/pipeline.py --stock`` as ``faust -A benchmarks.stock_app worker``.
When it has seen ``BENCH_EVENTS`` events it writes ``{"events": n, "seconds": s}`` (first
to last event) to ``BENCH_RESULT``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import faust
import orjson

app = faust.App(
    os.environ.get("APP_ID", "stock-bench"),
    broker=os.environ["BROKER_URL"],
    store="memory://",
    topic_partitions=int(os.environ.get("TOPIC_PARTITIONS", "4")),
    datadir=os.environ.get("APP_DATADIR", "./data/stock"),
    web_port=int(os.environ.get("WEB_PORT", "6067")),
    web_bind="127.0.0.1",
    consumer_auto_offset_reset="earliest",
)
payments = app.topic("payments", key_serializer="raw", value_serializer="raw")
TARGET = int(os.environ.get("BENCH_EVENTS", "0"))
state = {"n": 0, "first": 0.0}


@app.agent(payments)
async def parse_only(stream):
    async for value in stream:
        with contextlib.suppress(orjson.JSONDecodeError):  # invalid events count too
            orjson.loads(value)
        if state["n"] == 0:
            state["first"] = time.perf_counter()
        state["n"] += 1
        if state["n"] == TARGET:
            seconds = time.perf_counter() - state["first"]
            done = os.environ["BENCH_RESULT"]
            with open(done + ".tmp", "w") as fh:
                json.dump({"events": TARGET, "seconds": seconds}, fh)
            os.replace(done + ".tmp", done)  # the bench reads it only once whole
