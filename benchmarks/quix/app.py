"""The Quix Streams peer of ``make bench`` (``python -m benchmarks.pipeline --peer quix``).

What a team that picked Quix Streams instead would write for the same job, in a venv of
its own (``.venv-quix``, ``benchmarks/quix/requirements.lock``): read ``payments``,
parse each message, validate it with the same JSON Schema (fastjsonschema, as the
worker's authoritative check), and count 5-minute and hourly tumbling event-time
windows holding, per channel, the count, the amount sum and the count per status, in
Quix's RocksDB state (with its changelog topics). Windows are per message key (the
merchant), as Quix windows always are, with the channels inside the value: like the
worker's per-partition window values, and with no repartition topic.

Run by ``benchmarks/pipeline.py``; configured by the environment:
``BOOTSTRAP`` (host:port), ``EVENTS`` (stop after this many), ``RESULT`` (JSON file
written at the end: events, seconds from the first message to the last, CPU seconds
of this process over the same span), ``STATE_DIR``, ``SCHEMA`` (the schema file).
"""

from __future__ import annotations

import json
import os
import resource
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import fastjsonschema
from quixstreams import Application
from quixstreams.models.serializers import Deserializer


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Payments(Deserializer):
    """JSON, checked against the schema; a bad message becomes ``None`` (and is dropped
    by the filter), as the worker dead-letters it instead of stopping."""

    def __init__(self, schema: dict[str, Any]) -> None:
        super().__init__()
        self.validate = fastjsonschema.compile(schema)

    def __call__(self, value: bytes, ctx: Any) -> Any:
        try:
            doc = json.loads(value)
            self.validate(doc)
            datetime.fromisoformat(doc["event_time"])
        except (ValueError, TypeError, KeyError, fastjsonschema.JsonSchemaException):
            return None
        return doc


def event_time_ms(value: Any, headers: Any, timestamp: int, timestamp_type: Any) -> int:
    if value is None:
        return timestamp
    return int(datetime.fromisoformat(value["event_time"]).timestamp() * 1000)


def initial(payment: dict[str, Any]) -> dict[str, Any]:
    return add({}, payment)


def add(window: dict[str, Any], payment: dict[str, Any]) -> dict[str, Any]:
    counts = window.setdefault(payment["channel"], {"count": 0, "amount_minor_sum": 0,
                                                    "by_status": {}})
    counts["count"] += 1
    counts["amount_minor_sum"] += payment["amount_minor"]
    by_status = counts["by_status"]
    by_status[payment["status"]] = by_status.get(payment["status"], 0) + 1
    return window


def quiet(*args: Any, **kwargs: Any) -> bool:
    """A late payment is left out, as the worker leaves it out (counted there, not
    logged); Quix's default logs a warning for each."""
    return False


def main() -> None:
    total = int(os.environ["EVENTS"])
    with open(os.environ["SCHEMA"], encoding="utf-8") as f:
        schema = json.load(f)
    app = Application(broker_address=os.environ["BOOTSTRAP"],
                      consumer_group=f"quix-bench-{uuid.uuid4()}",
                      auto_offset_reset="earliest", state_dir=os.environ["STATE_DIR"],
                      loglevel="WARNING")
    topic = app.topic("payments", value_deserializer=Payments(schema),
                      timestamp_extractor=event_time_ms)
    seen = {"n": 0, "first": 0.0, "cpu": 0.0}

    def count(value: Any) -> None:
        if seen["n"] == 0:
            seen["first"], seen["cpu"] = time.perf_counter(), cpu_seconds()
        seen["n"] += 1
        if seen["n"] >= total:
            result = {"events": seen["n"], "seconds": time.perf_counter() - seen["first"],
                      "cpu_seconds": cpu_seconds() - seen["cpu"]}
            done = os.environ["RESULT"]
            with open(done + ".tmp", "w", encoding="utf-8") as out:
                json.dump(result, out)
            os.replace(done + ".tmp", done)  # the bench reads it only once whole
            app.stop()

    sdf = app.dataframe(topic)
    sdf = sdf.update(count)  # every message, bad ones included: the worker counts those too
    sdf = sdf.filter(lambda value: value is not None)
    for minutes in (5, 60):  # the worker's sizes and grace (WINDOW_GRACE_S)
        sdf.tumbling_window(timedelta(minutes=minutes), grace_ms=timedelta(minutes=2),
                            on_late=quiet).reduce(add, initial).current()
    app.run()


if __name__ == "__main__":
    main()
