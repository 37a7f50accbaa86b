"""A batch's accepted payments as columns: one numpy array per field.

Pure code (numpy only). The ingest handler builds one :class:`PaymentColumns` per
fetched batch, right after validation; the metric kernels
(:meth:`~pipeline.metrics.MetricEngine.extract_batch`), the late split and the window
counts (:mod:`pipeline.window_kernels`) read it instead of looping over payments. The
payments themselves stay in :attr:`PaymentColumns.payments` for what is per payment by
nature: the rows stored, a flag's evidence, an extractor without a kernel.

Text fields are *factorized*: an integer code per payment into a list of the distinct
values (:meth:`PaymentColumns.codes`), made once per field and batch, so grouping by a
channel or a currency is integer work.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter

import numpy as np

from models.events import STATUSES, ParsedTransaction

STATUS_CODES = {s: i for i, s in enumerate(STATUSES)}  # a status's code: its index in STATUSES

Codes = tuple[np.ndarray, list]  # (int64 code per payment, the distinct values by code)


def factorize(values: Sequence) -> Codes:
    """An integer code per value (in order of first appearance) and the distinct values."""
    distinct = list(dict.fromkeys(values))
    index = {value: i for i, value in enumerate(distinct)}
    return np.fromiter(map(index.__getitem__, values), np.int64, count=len(values)), distinct


class PaymentColumns:
    """The accepted payments of one batch, in offset order, a column per field.

    Attributes:
        payments: the typed payments themselves.
        offsets: source offsets (int64).
        event_ts: event time, POSIX seconds (float64).
        amount_minor, processing_ms: int64.
        risk_score: float64, NaN where a payment has none (``has_risk`` False).
        status: codes into :data:`~models.events.STATUSES`.
    """

    __slots__ = ("payments", "offsets", "event_ts", "amount_minor", "processing_ms",
                 "risk_score", "has_risk", "status", "_codes")

    def __init__(self, offsets: Iterable[int], payments: Iterable[ParsedTransaction]) -> None:
        self.payments = payments = list(payments)
        n = len(payments)
        self.offsets = np.fromiter(offsets, np.int64, count=n)
        self.event_ts = np.fromiter(map(_EVENT_TS, payments), np.float64, count=n)
        self.amount_minor = np.fromiter(map(_AMOUNT, payments), np.int64, count=n)
        self.processing_ms = np.fromiter(map(_PROCESSING, payments), np.int64, count=n)
        # None becomes NaN (the schema admits no NaN score: a NaN is always "none")
        self.risk_score = np.array(list(map(_RISK, payments)), np.float64).reshape(n)
        self.has_risk = ~np.isnan(self.risk_score)
        self.status = np.fromiter(map(STATUS_CODES.__getitem__, map(_STATUS, payments)),
                                  np.int64, count=n)
        self._codes: dict[str, Codes] = {}

    def __len__(self) -> int:
        return len(self.payments)

    @classmethod
    def concat(cls, parts: Sequence[PaymentColumns]) -> PaymentColumns:
        """The payments of ``parts``, one after another."""
        out = cls.__new__(cls)
        out.payments = [p for part in parts for p in part.payments]
        for name in ("offsets", "event_ts", "amount_minor", "processing_ms", "risk_score",
                     "has_risk", "status"):
            setattr(out, name, np.concatenate([getattr(part, name) for part in parts]))
        out._codes = {}
        return out

    def known_codes(self, field: str) -> Codes | None:
        """``field``'s codes if :meth:`codes` made them already, else None."""
        return self._codes.get(field)

    def codes(self, field: str) -> Codes:
        """``field`` factorized (a text field of the payment, ``None`` included)."""
        found = self._codes.get(field)
        if found is None:
            found = self._codes[field] = factorize(list(map(attrgetter(field), self.payments)))
        return found


_EVENT_TS = attrgetter("event_ts")
_AMOUNT = attrgetter("amount_minor")
_PROCESSING = attrgetter("processing_ms")
_RISK = attrgetter("risk_score")
_STATUS = attrgetter("status")

