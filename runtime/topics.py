"""Every topic the app uses, declared once with an explicit partition count.

The source topic and the changelog topics must have the same number of
partitions, or Faust refuses to start (``PartitionsMismatch``). Declaring
them here, before the broker can auto-create one with its own default, keeps
that true.
"""

from __future__ import annotations

from runtime.faust_app import PaymentApp

PAYMENTS = "payments"
PAYMENTS_DLQ = "payments-dlq"


def declare_topics(app: PaymentApp) -> tuple:
    """Declare ``payments`` and ``payments-dlq`` with raw bytes keys and values."""
    partitions = app.settings.topic_partitions
    payments = app.topic(
        PAYMENTS,
        partitions=partitions,
        key_serializer="raw",
        value_serializer="raw",
        acks=True,
    )
    dlq = app.topic(
        PAYMENTS_DLQ,
        partitions=partitions,
        key_serializer="raw",
        value_serializer="raw",
    )
    app.plain_topics += [payments, dlq]
    return payments, dlq
