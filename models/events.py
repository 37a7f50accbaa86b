"""The wire format's typed form and what the ingest path makes of each message."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class TransactionStatus(StrEnum):
    APPROVED = "approved"
    DECLINED = "declined"
    FAILED = "failed"
    PENDING = "pending"
    REVERSED = "reversed"


class ErrorCategory(StrEnum):
    """Why a message failed; each category has its own row in docs/errors.md."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    SCHEMA = "schema"
    RULE = "rule"


@dataclass(slots=True, frozen=True)
class Payment:
    """One accepted payment (``../shared/contracts/payment-event-v1.md``)."""

    transaction_id: str
    event_time: datetime
    merchant_id: str
    customer_id: str
    amount_minor: int
    currency: str
    channel: str
    payment_method: str
    status: str
    decline_code: str | None
    country: str
    processing_ms: int
    card_bin: str | None
    risk_score: float | None
    metadata: dict[str, str] | None

    @property
    def event_ts(self) -> float:
        """Event time as POSIX seconds."""
        return self.event_time.timestamp()

    def to_dict(self) -> dict[str, Any]:
        return {
            "transaction_id": self.transaction_id,
            "event_time": self.event_time.isoformat(),
            "merchant_id": self.merchant_id,
            "customer_id": self.customer_id,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "channel": self.channel,
            "payment_method": self.payment_method,
            "status": self.status,
            "decline_code": self.decline_code,
            "country": self.country,
            "processing_ms": self.processing_ms,
            "card_bin": self.card_bin,
            "risk_score": self.risk_score,
            "metadata": self.metadata,
        }


@dataclass(slots=True, frozen=True)
class ParseFailure:
    """Why a message was rejected; the raw bytes stay with the message."""

    category: ErrorCategory
    message: str
    field: str | None = None


@dataclass(slots=True, frozen=True)
class FailedMessage:
    """A rejected message with its coordinates: a ``failed_items`` row and a DLQ record."""

    raw: bytes
    category: ErrorCategory
    message: str
    topic: str
    partition: int
    offset: int
    retry_count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw_payload_b64": base64.b64encode(self.raw).decode("ascii"),
            "error_category": str(self.category),
            "error_message": self.message,
            "source_topic": self.topic,
            "source_partition": self.partition,
            "source_offset": self.offset,
            "retry_count": self.retry_count,
        }
