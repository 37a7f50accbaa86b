"""The wire format's typed form and what the ingest path makes of each message.

Pure data: no Faust, no I/O. Every type has ``to_dict()`` giving JSON-ready
values (the DLQ record, the CLI's export and the web UI use them).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec
import msgspec.structs

# Headers `faust -A app failed replay` sets on a message it sends again.
RETRY_COUNT_HEADER = "x-retry-count"  # how often the message was replayed
REPLAY_OF_HEADER = "x-replay-of"  # the failed_items.id it comes from
VALUE_REPR_CHARS = 80  # an offending value is shown truncated to this many characters


class TransactionStatus(StrEnum):
    """A payment's ``status`` (the payment-event-v1 contract's enum)."""

    APPROVED = "approved"
    DECLINED = "declined"
    FAILED = "failed"
    PENDING = "pending"
    REVERSED = "reversed"


# Every status, in contract order: the per-status columns (``<status>_count``), metric
# names (``transactions_<status>``) and report columns are made from this one list.
STATUSES: tuple[str, ...] = tuple(s.value for s in TransactionStatus)

# Every ``channel`` of the payment-event-v1 contract, in contract order: the dashboard's
# rows and the lake query's choices (config/schemas/transaction-v1.json enforces it).
CHANNELS: tuple[str, ...] = ("ecommerce", "pos", "mobile", "moto", "recurring")


def approval_rate(approved: int, payments: int) -> float | None:
    """Approval rate: approved payments among all payments (None when there are none)."""
    return approved / payments if payments else None


def authorization_rate(approved: int, declined: int) -> float | None:
    """Authorization rate: approved among the payments the issuer decided on (approved
    plus declined); failed, pending and reversed ones are left out."""
    decided = approved + declined
    return approved / decided if decided else None


class ErrorCategory(StrEnum):
    """Why a message failed; each category is described in docs/errors.md."""

    TOO_LARGE = "too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_object"
    SCHEMA = "schema"
    RULE = "rule"
    DUPLICATE = "duplicate"


def short_repr(value: Any, limit: int = VALUE_REPR_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, marked with ``...`` when cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ParsedTransaction(msgspec.Struct, frozen=True):
    """One accepted payment (``../shared/contracts/payment-event-v1.md``), typed.

    A msgspec Struct rather than a dataclass: built for every event on the hot
    path, and a frozen dataclass's ``__init__`` costs several times more. The fast
    parse builds it with positional arguments, in field order (a keyword call costs
    more); everyone else names them.
    """

    transaction_id: str
    event_time: datetime  # aware, UTC
    merchant_id: str
    customer_id: str
    amount_minor: int
    currency: str
    channel: str
    payment_method: str
    status: TransactionStatus
    decline_code: str | None
    country: str
    processing_ms: int
    card_bin: str | None = None
    risk_score: float | None = None
    metadata: dict[str, str] | None = None

    # Event time as POSIX seconds, derived once here: windows, lateness and the rules
    # over time read it several times per payment, and datetime.timestamp() is not free.
    # The fast parse passes it, computed for a whole batch; otherwise it is derived
    # here (a given 0.0 too: it is the epoch's own value, so nothing changes).
    event_ts: float = 0.0

    def __post_init__(self) -> None:
        if not self.event_ts:
            msgspec.structs.force_setattr(self, "event_ts", self.event_time.timestamp())

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
            "status": str(self.status),
            "decline_code": self.decline_code,
            "country": self.country,
            "processing_ms": self.processing_ms,
            "card_bin": self.card_bin,
            "risk_score": self.risk_score,
            "metadata": self.metadata,
        }


class ValidationError(msgspec.Struct, frozen=True):
    """One reason a message was rejected.

    ``field`` is a dotted path (``metadata.note``) or None when the message as a
    whole is at fault; ``rule`` names the schema keyword or rule that failed;
    ``value`` is the offending value's repr, truncated.
    """

    field: str | None
    rule: str
    message: str
    value: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "rule": self.rule, "message": self.message,
                "value": self.value}



def joined_messages(errors: tuple[ValidationError, ...]) -> str:
    """All errors in one line (the ``failed_items.error_message`` column)."""
    return "; ".join(e.message for e in errors)


def first_field(errors: tuple[ValidationError, ...]) -> str | None:
    """The first offending field (``failed_items.error_field``)."""
    return errors[0].field if errors else None


class ParseResult(msgspec.Struct, frozen=True):
    """Bytes in, exactly one of: a transaction, or a category with its errors."""

    raw: bytes
    transaction: ParsedTransaction | None = None
    category: ErrorCategory | None = None
    errors: tuple[ValidationError, ...] = ()

    @property
    def ok(self) -> bool:
        return self.transaction is not None

    @property
    def message(self) -> str:
        return joined_messages(self.errors)

    @property
    def field(self) -> str | None:
        return first_field(self.errors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "transaction": self.transaction.to_dict() if self.transaction else None,
            "error_category": str(self.category) if self.category else None,
            "errors": [e.to_dict() for e in self.errors],
            "raw_payload_b64": base64.b64encode(self.raw).decode("ascii"),
        }


@dataclass(slots=True, frozen=True)
class FailedMessage:
    """A rejected message with its coordinates: a ``failed_items`` row and a DLQ record."""

    raw: bytes
    category: ErrorCategory
    errors: tuple[ValidationError, ...]
    topic: str
    partition: int
    offset: int
    first_seen: datetime
    retry_count: int = 0
    replay_of: int | None = field(default=None)  # failed_items.id this message replays
    key: bytes | None = None  # the message key (merchant id), reused by replay
    # the id a duplicate re-sent (its failed_items row is then found by payment)
    transaction_id: str | None = None

    @property
    def message(self) -> str:
        return joined_messages(self.errors)

    @property
    def field(self) -> str | None:
        return first_field(self.errors)

    def to_dict(self, *, payload: bool = True) -> dict[str, Any]:
        """JSON-ready fields; ``payload=False`` leaves out ``raw_payload_b64`` (the DLQ
        record adds it within its size bound: :func:`pipeline.records.dead_letter_value`)."""
        head = {"raw_payload_b64": base64.b64encode(self.raw).decode("ascii")} if payload else {}
        return head | {
            "error_category": str(self.category),
            "error_message": self.message,
            "errors": [e.to_dict() for e in self.errors],
            "source_topic": self.topic,
            "source_partition": self.partition,
            "source_offset": self.offset,
            "first_seen_at": self.first_seen.isoformat(),
            "retry_count": self.retry_count,
            "replay_of": self.replay_of,
            "key_b64": base64.b64encode(self.key).decode("ascii") if self.key else None,
        }
