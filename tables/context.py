"""The message context Faust tables need, set once per partition batch.

Faust tables find the partition of a key (for the changelog and the RocksDB
column) from the stream's current event. The batch path has no stream, so the
code that writes tables (the ingest handler, the write-back cache, the expiry
jobs) sets that event once per partition batch with :func:`partition_context`.
"""

from __future__ import annotations

import contextvars
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

from faust.events import Event
from faust.streams import _current_event
from faust.types import AppT, Message

from models.records import Record


@contextmanager
def partition_context(app: AppT, message: Message | Record) -> Iterator[None]:
    """Run table operations as if ``message`` were the stream's current event.

    Faust tables find the partition of a key (for the changelog and the RocksDB
    column) from the current event. A batch handler sets it once per partition
    batch, to the batch's last message, instead of once per event.
    """
    event = Event(app, message.key, message.value, message.headers, cast(Message, message))
    token: contextvars.Token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


def placeholder_message(topic: str, partition: int) -> Message:
    """A message of ``topic[partition]`` with no content, for :func:`partition_context`
    outside a batch (periodic jobs that write tombstones to a partition's changelog)."""
    return Message(topic, partition, -1, time.time(), 0, [], None, None, None)
