"""A fetched Kafka record as the batch handlers get it (:mod:`runtime.batching`).

Faust's :class:`~faust.types.Message` is built by a Python ``__init__`` that sets 20
attributes: 1.9 µs a record, 3-4 % of the worker's time at full speed. A batch handler
reads a handful of them, and Faust's tables read a few more of the batch's last record
(:func:`tables.context.partition_context`); :class:`Record` holds exactly those, made in
C by msgspec (0.3 µs). Records of other topics still become Faust messages.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Record(msgspec.Struct, frozen=True, gc=False):
    """One record of a partition's fetched batch: what Faust's ``Message`` calls the same.

    Attributes:
        timestamp: the record's timestamp in POSIX seconds (Kafka's milliseconds / 1000,
            as Faust gives it), None when the record has none.
        headers: ``(key, value)`` pairs as the Kafka client gives them.
        tp: its topic-partition (Faust's ``TP``).
        generation_id: the consumer group generation it was fetched in.
    """

    topic: str
    partition: int
    offset: int
    timestamp: float | None
    timestamp_type: int
    headers: Any
    key: bytes | None
    value: bytes | None
    tp: Any
    generation_id: int
