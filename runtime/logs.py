"""Log format and secret redaction, set up when the app is created.

``LOG_FORMAT=text`` (the default) keeps Faust's coloured lines for people;
``LOG_FORMAT=json`` writes one JSON object per line (python-json-logger) with
``time``, ``level``, ``logger`` and ``message``, plus the fields a call site adds with
``extra=``: ``topic``, ``partition``, ``offsets`` (first-last), ``batch_size`` and
``config_version`` where they apply. Faust takes the configuration through its
``logging_config`` setting, merged into the worker's own.

Secrets are kept out of log calls by the code; as a second line, every log record's
message is checked against the secret values the settings hold, and a match is
replaced by ``***`` before any handler formats it, in either format.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

JSON_FIELDS = "%(levelname)s %(name)s %(message)s"
RENAMED = {"levelname": "level", "name": "logger"}
MIN_SECRET_CHARS = 6  # shorter values would redact ordinary words


def logging_config(log_format: str) -> dict[str, Any] | None:
    """Faust's ``logging_config`` for ``log_format`` (None: Faust's default text)."""
    if log_format != "json":
        return None
    return {
        "version": 1,
        "merge": True,  # mode merges this into its own configuration (levels, loggers)
        "formatters": {"json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": JSON_FIELDS,
            "rename_fields": RENAMED,
            "timestamp": "time",
        }},
        "handlers": {"default": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "stream": "ext://sys.stderr",
        }},
    }


def redact_secrets(secrets: Sequence[str]) -> None:
    """Make every log record with a secret in its message carry ``***`` instead."""
    values = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
    if not values:
        return
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts", None) == values:
        return  # already installed for these values

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: leave it to the handler
            return record
        if any(value in message for value in values):
            for value in values:
                message = message.replace(value, "***")
            record.msg, record.args = message, None
        return record

    factory.redacts = values  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
