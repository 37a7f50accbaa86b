"""SQLAlchemy declarative tables: the PostgreSQL half of the contract.

Alembic owns the schema (``alembic/versions``); this module is its
``target_metadata`` and the reference for column names. Names of constraints
and indexes follow ``NAMING_CONVENTION`` so migrations can name them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _now() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class TransactionClaim(Base):
    """Which record a ``transaction_id`` was first accepted from, for every partition and
    worker: the duplicate check's final authority (:mod:`storage.claims`). Written by the
    ingest handler before it counts a payment, so a re-send under another key, partition
    or record time, or long after the in-memory window, is a duplicate; kept as long as
    ``normalized_transactions`` rows (TRANSACTIONS_RETENTION_DAYS, by ``claimed_at``)."""

    __tablename__ = "transaction_claims"

    transaction_id: Mapped[str] = mapped_column(Text, primary_key=True)
    source_topic: Mapped[str] = mapped_column(Text, nullable=False)
    source_partition: Mapped[int] = mapped_column(Integer, nullable=False)
    source_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    claimed_at: Mapped[datetime] = _now()

    __table_args__ = (Index("ix_transaction_claims_claimed_at", "claimed_at"),)


class NormalizedTransaction(Base):
    """One row per accepted payment; replays are ignored by primary key."""

    __tablename__ = "normalized_transactions"

    transaction_id: Mapped[str] = mapped_column(Text, primary_key=True)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    merchant_id: Mapped[str] = mapped_column(Text, nullable=False)
    customer_id: Mapped[str] = mapped_column(Text, nullable=False)
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    channel: Mapped[str] = mapped_column(Text, nullable=False)
    payment_method: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False)
    decline_code: Mapped[str | None] = mapped_column(Text)
    country: Mapped[str] = mapped_column(Text, nullable=False)
    processing_ms: Mapped[int] = mapped_column(Integer, nullable=False)
    card_bin: Mapped[str | None] = mapped_column(Text)
    risk_score: Mapped[float | None] = mapped_column(Float)
    metadata_: Mapped[dict | None] = mapped_column("metadata", JSONB)
    source_topic: Mapped[str] = mapped_column(Text, nullable=False)
    source_partition: Mapped[int] = mapped_column(Integer, nullable=False)
    source_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    ingested_at: Mapped[datetime] = _now()

    __table_args__ = (
        Index("ix_normalized_transactions_event_time", "event_time"),
        Index("ix_normalized_transactions_merchant_event_time", "merchant_id", "event_time"),
        # 0005: one customer's payments across merchants (the rules over a customer's
        # payments, customers show)
        Index("ix_normalized_transactions_customer_event_time", "customer_id", "event_time"),
    )


class DynamicMetric(Base):
    """Extracted metrics of one accepted payment, one row per metric type:
    ``metric_data`` is ``{metric name: {dimension: value}}`` (docs/metrics.md)."""

    __tablename__ = "dynamic_metrics"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(
        Text, ForeignKey("normalized_transactions.transaction_id", ondelete="CASCADE"),
        nullable=False,
    )
    metric_type: Mapped[str] = mapped_column(Text, nullable=False)
    metric_data: Mapped[dict] = mapped_column(JSONB, nullable=False)
    created_at: Mapped[datetime] = _now()
    # 0003: the metrics configuration that produced the row
    config_version: Mapped[str] = mapped_column(Text, nullable=False, server_default="")

    __table_args__ = (
        Index("ix_dynamic_metrics_transaction_id_metric_type", "transaction_id", "metric_type"),
        Index("ix_dynamic_metrics_created_at", "created_at"),
    )


FLAG_STATUSES = ("open", "cleared", "escalated")


class ComplianceFlag(Base):
    """One payment a compliance rule flagged: a case for an analyst to review.

    Written by the sink in the transaction that stores the payment, only for payments that
    transaction stored for the first time, and never updated by it: a replay, takeover or
    crash neither duplicates a flag nor resets its review (``status``, ``reviewed_by``,
    ``reviewed_at``, ``note``, set by ``flags review``). ``evidence`` says why it fired:
    the rule's parameters and, for rules over time, the payments that counted
    (docs/metrics.md, "Flags"). Not purged with the payments: a case outlives its
    transaction's retention."""

    __tablename__ = "compliance_flags"

    transaction_id: Mapped[str] = mapped_column(Text, primary_key=True)
    rule: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text, nullable=False)
    merchant_id: Mapped[str] = mapped_column(Text, nullable=False)
    event_time: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    amount_minor: Mapped[int] = mapped_column(BigInteger, nullable=False)
    currency: Mapped[str] = mapped_column(Text, nullable=False)
    config_version: Mapped[str] = mapped_column(Text, nullable=False)
    evidence: Mapped[dict] = mapped_column(JSONB, nullable=False)
    status: Mapped[str] = mapped_column(Text, nullable=False, server_default="open")
    reviewed_by: Mapped[str | None] = mapped_column(Text)
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    note: Mapped[str | None] = mapped_column(Text)
    flagged_at: Mapped[datetime] = _now()

    __table_args__ = (
        CheckConstraint("status IN ('open', 'cleared', 'escalated')", name="status"),
        Index("ix_compliance_flags_rule_status_event_time", "rule", "status", "event_time"),
        Index("ix_compliance_flags_customer_id_event_time", "customer_id", "event_time"),
        Index("ix_compliance_flags_event_time", "event_time"),
    )


class PaymentWindowPartial(Base):
    """Counts of one (window, channel) from one source partition: table state, absolute."""

    __tablename__ = "payment_window_partials"

    window_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    channel: Mapped[str] = mapped_column(Text, primary_key=True)
    source_partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    tx_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    approved_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    declined_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    failed_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    pending_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    reversed_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    amount_minor_sum: Mapped[int] = mapped_column(Numeric(30, 0), nullable=False)
    last_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = _now()


class PaymentMetrics5m(Base):
    """One row per (5-minute event-time window, channel), summed over partitions."""

    __tablename__ = "payment_metrics_5m"

    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    channel: Mapped[str] = mapped_column(Text, primary_key=True)
    tx_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    approved_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    declined_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    failed_count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    pending_count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    reversed_count: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default="0")
    amount_minor_sum: Mapped[int] = mapped_column(Numeric(30, 0), nullable=False)
    updated_at: Mapped[datetime] = _now()


class AggregateHistogram(Base):
    """One row per (metric, dimension, window); upserted from table state."""

    __tablename__ = "aggregate_histograms"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    metric_type: Mapped[str] = mapped_column(Text, nullable=False)
    dimension: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    time_window: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    window_seconds: Mapped[int] = mapped_column(Integer, nullable=False)
    buckets: Mapped[dict] = mapped_column(JSONB, nullable=False)
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sum: Mapped[float] = mapped_column(Float, nullable=False)
    min: Mapped[float | None] = mapped_column(Float)
    max: Mapped[float | None] = mapped_column(Float)
    updated_at: Mapped[datetime] = _now()
    # 0003: quantile estimates from the buckets
    p50: Mapped[float | None] = mapped_column(Float)
    p95: Mapped[float | None] = mapped_column(Float)
    p99: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("metric_type", "dimension", "time_window", "window_seconds",
                         name="uq_aggregate_histograms_metric_dimension_window"),
        Index("ix_aggregate_histograms_time_window", "time_window"),
    )


class HistogramPartial(Base):
    """One windowed metric of one (window, source partition): table state, absolute."""

    __tablename__ = "histogram_partials"

    window_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    metric_type: Mapped[str] = mapped_column(Text, primary_key=True)
    dimension: Mapped[str] = mapped_column(Text, primary_key=True)
    source_partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    buckets: Mapped[list] = mapped_column(JSONB, nullable=False)  # counts, overflow last
    count: Mapped[int] = mapped_column(BigInteger, nullable=False)
    sum: Mapped[float] = mapped_column(Float, nullable=False)
    min: Mapped[float | None] = mapped_column(Float)
    max: Mapped[float | None] = mapped_column(Float)
    last_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    updated_at: Mapped[datetime] = _now()

    __table_args__ = (Index("ix_histogram_partials_window_start", "window_start"),)


class RebuiltWindow(Base):
    """A (window, source partition) that ``reprocess`` rebuilt from the stored payments:
    the workers' writes no longer replace its rows, but for ``late_events`` and
    ``failed`` (storage/window_rebuild.py)."""

    __tablename__ = "rebuilt_windows"

    window_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    source_partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    config_version: Mapped[str] = mapped_column(Text, nullable=False)
    rebuilt_at: Mapped[datetime] = _now()

    __table_args__ = (Index("ix_rebuilt_windows_window_start", "window_start"),)


class FailedItem(Base):
    """One row per failed message, raw bytes preserved, unique by source coordinates."""

    __tablename__ = "failed_items"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    raw_payload: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    error_category: Mapped[str] = mapped_column(Text, nullable=False)
    error_message: Mapped[str] = mapped_column(Text, nullable=False)
    source_topic: Mapped[str] = mapped_column(Text, nullable=False)
    source_partition: Mapped[int] = mapped_column(Integer, nullable=False)
    source_offset: Mapped[int] = mapped_column(BigInteger, nullable=False)
    retry_count: Mapped[int] = mapped_column(Integer, nullable=False, server_default="0")
    replayed: Mapped[bool] = mapped_column(Boolean, nullable=False, server_default="false")
    created_at: Mapped[datetime] = _now()
    # 0002: structured errors, when the broker first had the message, replay lineage
    source_key: Mapped[bytes | None] = mapped_column(LargeBinary)
    error_field: Mapped[str | None] = mapped_column(Text)
    errors: Mapped[list] = mapped_column(JSONB, nullable=False, server_default="[]")
    first_seen_at: Mapped[datetime] = _now()
    replay_of: Mapped[int | None] = mapped_column(BigInteger)
    replayed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # 0005: the id a duplicate re-sent (payments show lists a payment's re-sends)
    transaction_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("source_topic", "source_partition", "source_offset"),
        Index("ix_failed_items_error_category_created_at", "error_category", "created_at"),
        Index("ix_failed_items_created_at", "created_at"),
        Index("ix_failed_items_transaction_id", "transaction_id",
              postgresql_where=text("transaction_id IS NOT NULL")),
    )
