"""What a Kafka record's metadata and a dead-letter record may hold: bounded by construction.

Any producer sets a record's CreateTime and headers, so neither is trusted as it comes:

- :func:`record_time` is the record's broker timestamp when it is plausible, else the
  arrival time. A year-10000 CreateTime crashed the lake writer, and a 1 ms one made a
  valid event fail the event-time rule; the window of trust is bounded on both sides so
  a replay of a record within Event Hubs' longest retention gets the same verdict.
- :func:`bounded_int` reads an integer header into the range its column holds
  (``failed_items.retry_count`` is int4, ``replay_of`` int8).
- :func:`dead_letter_value` encodes the ``payments-dlq`` record under the broker's
  record size limit (1 MiB is a hard limit on Event Hubs): a payload that would not fit
  is cut in the record and flagged; ``failed_items`` keeps it whole.
- :func:`clean_text` makes any string storable in PostgreSQL ``text``/``jsonb`` and
  encodable as UTF-8 (no NUL, no lone surrogate), keeping the rest readable.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

# A CreateTime this far ahead of the worker's clock is not believed (producer clock skew).
RECORD_TIME_MAX_AHEAD_S = 60.0
# ... nor one older than this: Event Hubs' longest retention (Premium, 90 days); a
# backlog read again within it keeps its record times, so its verdicts do not change.
RECORD_TIME_MAX_AGE_S = 90 * 86_400.0

INT4_MAX = 2**31 - 1
INT8_MAX = 2**63 - 1

# The producer's max_request_size is 1,000,000 bytes for the whole request; the value
# keeps room for the key, the headers and the batch framing.
DEAD_LETTER_MAX_BYTES = 900_000
_KEEP_ERRORS = 20  # errors kept in a dead-letter record that would not fit otherwise
_KEEP_MESSAGE = 2_000  # characters of error_message kept in that case


def record_time(timestamp: float | None, arrival: float) -> float:
    """The record's broker timestamp (POSIX seconds) if plausible, else ``arrival``."""
    if (timestamp is None or timestamp != timestamp  # None or NaN
            or not arrival - RECORD_TIME_MAX_AGE_S <= timestamp
            <= arrival + RECORD_TIME_MAX_AHEAD_S):
        return arrival
    return timestamp


def record_times(timestamps: Sequence[float | None], arrival: float) -> list[float]:
    """:func:`record_time` of each of a batch's timestamps (None and NaN alike)."""
    try:
        stamps = np.array(timestamps, np.float64).reshape(len(timestamps))  # None: NaN
    except (TypeError, ValueError, OverflowError):  # not numbers: each on its own
        return [record_time(t, arrival) for t in timestamps]
    plausible = ((stamps >= arrival - RECORD_TIME_MAX_AGE_S)
                 & (stamps <= arrival + RECORD_TIME_MAX_AHEAD_S))
    return np.where(plausible, stamps, arrival).tolist()


def bounded_int(value: bytes | str | None, low: int, high: int) -> int | None:
    """An integer header (ASCII digits) within ``[low, high]``, else None."""
    if not value or len(value) > 20:
        return None
    try:
        number = int(value)
    except ValueError:
        return None
    return number if low <= number <= high else None


def clean_text(text: str) -> str:
    """``text`` without NUL characters and lone surrogates (each shown escaped)."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def dead_letter_value(record: dict[str, Any], raw: bytes,
                      limit: int = DEAD_LETTER_MAX_BYTES) -> bytes:
    """The DLQ record's JSON (``record`` is :meth:`FailedMessage.to_dict` without the
    payload), at most ``limit`` bytes: the whole payload if it fits, else its first
    bytes with ``raw_payload_truncated`` set (``failed_items`` has it whole)."""
    record = dict(record, raw_payload_bytes=len(raw), raw_payload_truncated=False)
    head = _encode(dict(record, raw_payload_b64=""))
    if len(head) > limit // 2:  # huge error lists: keep the first ones
        errors = record.get("errors") or []
        record["errors"] = errors[:_KEEP_ERRORS]
        record["errors_truncated"] = len(errors)
        record["error_message"] = str(record.get("error_message", ""))[:_KEEP_MESSAGE]
        head = _encode(dict(record, raw_payload_b64=""))
    room = (limit - len(head)) // 4 * 3  # base64: 4 characters for every 3 bytes
    if len(raw) > room:
        record["raw_payload_truncated"] = True
        raw = raw[:max(0, room)]
    return _encode(dict(record, raw_payload_b64=base64.b64encode(raw).decode("ascii")))


def clean_json(value: Any) -> str:
    """``value`` as JSON text whose every string went through :func:`clean_text`
    (``jsonb`` refuses ``\\u0000`` too)."""
    return orjson.dumps(_cleaned(value), default=str).decode()


def _encode(record: dict[str, Any]) -> bytes:
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError:  # a lone surrogate somewhere: make every string clean
        return orjson.dumps(_cleaned(record))


def _cleaned(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, dict):
        return {clean_text(str(k)): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_cleaned(v) for v in value]
    return value
