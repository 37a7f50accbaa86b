"""The project's one base error class.

Every error the project raises on purpose derives from :class:`PaymentMonitorError`
(and from the built-in class it always had, such as ``ValueError``, so existing
``except`` clauses still match). A caller that wants "anything we raised on purpose"
catches the base; each subclass names what failed: the field, key, topic, partition
or offset (docs/errors.md).
"""

from __future__ import annotations


class PaymentMonitorError(Exception):
    """Base of the payment monitor's own errors."""
