"""A batch's accepted payments as one Arrow record batch, made once for every sink.

The PostgreSQL sink stages the payments from these columns (Arrow's CSV writer makes its
COPY input) and the lake takes its payment fields from the same arrays: each field of
each payment is read from its Python object once, not once per sink. Each
:class:`~pipeline.batches.SinkBatch` keeps its record batch (``arrow``), so a retried
write or the lake's append after the write reuses it; they are made in the sink thread,
where both sinks run.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import pyarrow as pa

from models.events import ParsedTransaction
from pipeline.batches import SinkBatch


def _metadata_json(p: ParsedTransaction) -> str | None:
    return None if p.metadata is None else orjson.dumps(p.metadata).decode()


# the payment's columns, in stage_transactions' order (storage.postgres)
FIELDS: tuple[tuple[str, Callable[[ParsedTransaction], Any], pa.DataType], ...] = (
    ("transaction_id", operator.attrgetter("transaction_id"), pa.string()),
    ("event_ts", operator.attrgetter("event_ts"), pa.float64()),
    ("merchant_id", operator.attrgetter("merchant_id"), pa.string()),
    ("customer_id", operator.attrgetter("customer_id"), pa.string()),
    ("amount_minor", operator.attrgetter("amount_minor"), pa.int64()),
    ("currency", operator.attrgetter("currency"), pa.string()),
    ("channel", operator.attrgetter("channel"), pa.string()),
    ("payment_method", operator.attrgetter("payment_method"), pa.string()),
    ("status", operator.attrgetter("status"), pa.string()),  # a StrEnum: Arrow takes its value
    ("decline_code", operator.attrgetter("decline_code"), pa.string()),
    ("country", operator.attrgetter("country"), pa.string()),
    ("processing_ms", operator.attrgetter("processing_ms"), pa.int64()),
    ("card_bin", operator.attrgetter("card_bin"), pa.string()),
    ("risk_score", operator.attrgetter("risk_score"), pa.float64()),
    ("metadata", _metadata_json, pa.string()),  # JSON text
)
SCHEMA = pa.schema([(name, kind) for name, _, kind in FIELDS])
_UNFIT = False  # kept on a batch whose values do not all fit their columns


def payment_arrays(batches: Sequence[SinkBatch]) -> list[pa.RecordBatch | None]:
    """Each batch's accepted payments, in offset order, a column per :data:`FIELDS`.

    The batches that have none yet get theirs together (a sink round at 5,000 events/s
    holds about 150 small batches; an array's fixed cost, paid per batch, was more than
    the values' own): one record batch of all their payments, of which each keeps its
    slice, a view. None for a batch whose round held a value that does not fit its
    column's type (an integer beyond 64 bits, which PostgreSQL refuses as well): each
    sink then reads those payments one at a time, as it would without this."""
    todo = [b for b in batches if b.arrow is None]
    if todo:
        payments = [p for b in todo for p in b.payments.values()]
        try:
            whole = pa.RecordBatch.from_arrays(
                [pa.array(list(map(get, payments)), kind) for _, get, kind in FIELDS],
                schema=SCHEMA)
        except (pa.ArrowInvalid, OverflowError):
            for b in todo:
                b.arrow = _UNFIT
        else:
            start = 0
            for b in todo:
                b.arrow = whole.slice(start, len(b.payments))
                start += len(b.payments)
    return [None if b.arrow is _UNFIT else b.arrow for b in batches]
