"""A batch's accepted payments as one Arrow record batch, made once for every sink.

The PostgreSQL sink stages the payments from these columns (Arrow's CSV writer makes its
COPY input) and the lake takes its payment fields from the same arrays: each field of
each payment is read from its Python object once, not once per sink, and not at all
where the ingest handler's columns (:class:`~pipeline.columns.PaymentColumns`) hold it
already: the numbers, the status and every text field the metrics grouped by. Each
:class:`~pipeline.batches.SinkBatch` keeps its record batch (``arrow``), so a retried
write or the lake's append after the write reuses it; they are made in the sink thread,
where both sinks run.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from models.events import STATUSES, ParsedTransaction
from pipeline.batches import SinkBatch
from pipeline.columns import PaymentColumns


def metadata_json(p: ParsedTransaction) -> str | None:
    """The payment's metadata as the JSON text stored for it (None: it has none)."""
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
    ("metadata", metadata_json, pa.string()),  # JSON text
)
SCHEMA = pa.schema([(name, kind) for name, _, kind in FIELDS])
_UNFIT = False  # kept on a batch whose values do not all fit their columns
COLUMNS_FROM = 1024  # payments in a round from which the handler's columns are used


def payment_arrays(batches: Sequence[SinkBatch]) -> list[pa.RecordBatch | None]:
    """Each batch's accepted payments, in offset order, a column per :data:`FIELDS`.

    The batches that have none yet get theirs together (a sink round at 5,000 events/s
    holds about 150 small batches; an array's fixed cost, paid per batch, was more than
    the values' own): one record batch of all their payments, of which each keeps its
    slice, a view. None for a batch whose round held a value that does not fit its
    column's type (an integer beyond 64 bits, which PostgreSQL refuses as well): each
    sink then reads those payments one at a time, as it would without this."""
    _make(batches)
    return [None if b.arrow is _UNFIT else b.arrow for b in batches]


def round_arrays(batches: Sequence[SinkBatch]) -> pa.RecordBatch | None:
    """The payments of all ``batches``, one batch after another, as one record batch
    (:func:`payment_arrays`'s, joined); None when a value does not fit its column."""
    whole = _make(batches)
    if whole is not None:  # all made just now, together
        return whole
    made = [b.arrow for b in batches]
    if any(m is _UNFIT for m in made):
        return None
    if len(made) <= 1:
        return made[0] if made else pa.RecordBatch.from_pylist([], schema=SCHEMA)
    return pa.Table.from_batches(made, schema=SCHEMA).combine_chunks().to_batches()[0]


def _make(batches: Sequence[SinkBatch]) -> pa.RecordBatch | None:
    """Make the arrays of the batches that have none; the record batch of all of them
    when every one of ``batches`` was made here."""
    todo = [b for b in batches if b.arrow is None]
    if not todo:
        return None
    payments = [p for b in todo for p in b.payments.values()]
    # the columns' fixed cost a field (a take, a few concatenations: tens of µs here)
    # pays off from about a thousand payments a round
    columns = [_columns(b) if len(payments) >= COLUMNS_FROM else None for b in todo]
    try:
        whole = pa.RecordBatch.from_arrays(_arrays(payments, columns), schema=SCHEMA)
    except (pa.ArrowInvalid, OverflowError):
        for b in todo:
            b.arrow = _UNFIT
        return None
    start = 0
    for b in todo:
        b.arrow = whole.slice(start, len(b.payments))
        start += len(b.payments)
    return whole if len(todo) == len(batches) else None


_NUMBERS = ("event_ts", "amount_minor", "processing_ms")  # PaymentColumns holds these as-is
_STATUS_TEXT = pa.array(STATUSES, pa.string())  # a status code's text


def _columns(batch: SinkBatch) -> PaymentColumns | None:
    """The ingest handler's columns of ``batch``'s payments, when it has them (its
    metrics were extracted from exactly these payments, in this order)."""
    metrics = batch.metrics
    if metrics is None:
        return None
    cols = metrics.cols
    if len(cols) != len(batch.payments) or not all(
            map(operator.is_, cols.payments, batch.payments.values())):
        return None
    return cols


def _arrays(payments: list[ParsedTransaction],
            columns: list[PaymentColumns | None]) -> list[pa.Array]:
    """Each of :data:`FIELDS` for ``payments`` (the batches' payments, one batch after
    another; ``columns`` each batch's, or None): from the columns where every batch has
    them (a text field only where each batch factorized it already: its distinct values
    and each payment's code), else from each payment."""
    cols = [c for c in columns if c is not None]
    if len(cols) < len(columns):
        cols = []
    arrays = []
    for name, get, kind in FIELDS:
        known = [k for c in cols if (k := c.known_codes(name)) is not None]
        if cols and name in _NUMBERS:
            arrays.append(pa.array(np.concatenate([getattr(c, name) for c in cols]), kind))
        elif cols and name == "risk_score":
            arrays.append(pa.array(np.concatenate([c.risk_score for c in cols]), kind,
                                   mask=~np.concatenate([c.has_risk for c in cols])))
        elif cols and name == "status":
            arrays.append(_STATUS_TEXT.take(np.concatenate([c.status for c in cols])))
        elif cols and len(known) == len(cols):
            distinct = [v for _, values in known for v in values]
            # each batch's codes, moved past the distinct values of the batches before it
            sizes = np.array([0] + [len(values) for _, values in known[:-1]], np.int64)
            shift = np.repeat(np.cumsum(sizes), [len(c) for c in cols])
            codes = np.concatenate([codes for codes, _ in known]) + shift
            arrays.append(pa.array(distinct, kind).take(codes))
        else:
            arrays.append(pa.array(list(map(get, payments)), kind))
    return arrays
