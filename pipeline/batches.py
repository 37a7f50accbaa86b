"""What the ingest handler hands to the sinks for one topic-partition batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from models.events import FailedMessage, ParsedTransaction
from pipeline.metrics import BatchMetrics
from pipeline.windows import WindowRow


@dataclass(slots=True)
class SinkBatch:
    """One processed batch of one topic-partition, in offset order.

    ``messages`` are the fetched records (:class:`~models.records.Record`); ``payments`` maps
    an offset to its accepted payment; every other offset is in ``failed``.
    """

    topic: str
    partition: int
    messages: list[Any]
    payments: dict[int, ParsedTransaction]
    failed: list[FailedMessage]
    window_rows: list[WindowRow]
    arrival: float
    # the accepted payments' metrics, a column each (None: not extracted, e.g. in tests)
    metrics: BatchMetrics | None = None
    config_version: str = ""  # ActiveConfig.version the batch was processed under
    epoch: int = 0  # SinkService.epoch(partition) when the handler began: stale if revoked
    # the rules over a customer's payments the batch's configuration holds, judged by the
    # sink when it stores the payments (storage.customer_rules)
    customer_rules: tuple[Any, ...] = ()
    # the payments as Arrow columns, made once for all the sinks by the storage layer
    # (storage.payment_arrays); None until then
    arrow: Any = None

    @property
    def first_offset(self) -> int:
        return int(self.messages[0].offset)

    @property
    def last_offset(self) -> int:
        return int(self.messages[-1].offset)
