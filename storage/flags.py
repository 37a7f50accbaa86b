"""Reading and reviewing ``compliance_flags``: the compliance team's cases.

Used by ``faust -A app flags ...`` (:mod:`app.flag_commands`) and the web view
``/payments/flags/``. The sink writes the rows (:mod:`storage.postgres`); here they
are listed, shown and reviewed. Every query is parameterized; filters combine with AND.

Lists are newest event first and paged by key (``after``: the last row's
``event_time``, ``transaction_id`` and ``rule``), so a page stays cheap however deep
and rows written meanwhile never shift a page.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, text

from models.db import FLAG_STATUSES
from models.errors import PaymentMonitorError

COLUMNS = ("transaction_id", "rule", "customer_id", "merchant_id", "event_time",
           "amount_minor", "currency", "config_version", "evidence", "status", "reviewed_by",
           "reviewed_at", "note", "flagged_at")
REVIEW_STATUSES = ("cleared", "escalated")
MAX_PAGE = 1000


class FlagError(PaymentMonitorError, ValueError):
    """A filter, cursor or review the flag store cannot take."""


class FlagNotFound(FlagError, LookupError):
    """No flag for that payment and rule."""


@dataclass(frozen=True)
class FlagFilter:
    """Which flags: by rule, status, customer, event time (``since`` inclusive,
    ``until`` exclusive)."""

    rule: str | None = None
    status: str | None = None
    customer: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in FLAG_STATUSES:
            raise FlagError(f"unknown status {self.status!r} (known: "
                            f"{', '.join(FLAG_STATUSES)})")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise FlagError(f"{name} must carry a time zone")

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        for column, value in (("rule", self.rule), ("status", self.status),
                              ("customer_id", self.customer)):
            if value is not None:
                clauses.append(f"{column} = :{column}")
                params[column] = value
        if self.since is not None:
            clauses.append("event_time >= :since")
            params["since"] = self.since
        if self.until is not None:
            clauses.append("event_time < :until")
            params["until"] = self.until
        return (" AND ".join(clauses) or "TRUE"), params


def encode_cursor(row: dict[str, Any]) -> str:
    """The key of the last row of a page: where the next page starts."""
    key = [row["event_time"].isoformat(), row["transaction_id"], row["rule"]]
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str, str]:
    try:
        when, tx_id, rule = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(when), str(tx_id), str(rule)
    except (ValueError, TypeError) as exc:
        raise FlagError(f"not a page cursor: {cursor!r}") from exc


class ComplianceFlags:
    """The ``compliance_flags`` table, read and reviewed."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def page(self, flt: FlagFilter, *, limit: int = 50,
             after: str | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Up to ``limit`` flags, newest event first, after ``after`` (a cursor from the
        previous page); and the cursor of the next page, None at the end."""
        if not 1 <= limit <= MAX_PAGE:
            raise FlagError(f"limit must be 1..{MAX_PAGE}, got {limit}")
        where, params = flt.where()
        if after is not None:
            when, tx_id, rule = decode_cursor(after)
            where += " AND (event_time, transaction_id, rule) < (:a_time, :a_tx, :a_rule)"
            params.update(a_time=when, a_tx=tx_id, a_rule=rule)
        sql = (f"SELECT {', '.join(COLUMNS)} FROM compliance_flags WHERE {where} "
               "ORDER BY event_time DESC, transaction_id DESC, rule DESC LIMIT :limit")
        with self.engine.connect() as conn:
            rows = [dict(r._mapping) for r in conn.execute(text(sql),
                                                           {**params, "limit": limit + 1})]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, (encode_cursor(rows[-1]) if more else None)

    def select(self, flt: FlagFilter, chunk: int = 5000) -> Iterator[dict[str, Any]]:
        """Every matching flag, newest event first, a page at a time (for exports)."""
        after = None
        while True:
            rows, after = self.page(flt, limit=min(chunk, MAX_PAGE), after=after)
            yield from rows
            if after is None:
                return

    def count(self, flt: FlagFilter) -> int:
        where, params = flt.where()
        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM compliance_flags "
                                         f"WHERE {where}"), params).scalar_one())

    def counts(self, flt: FlagFilter) -> dict[str, dict[str, int]]:
        """``{rule: {status: flags}}`` of the matching flags."""
        where, params = flt.where()
        sql = (f"SELECT rule, status, count(*) FROM compliance_flags WHERE {where} "
               "GROUP BY rule, status ORDER BY rule, status")
        out: dict[str, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for rule, status, n in conn.execute(text(sql), params):
                out.setdefault(rule, {})[status] = int(n)
        return out

    def per_window(self, start: datetime, end: datetime,
                   size: int) -> dict[int, dict[str, int]]:
        """Flags per ``size``-second window of event time (its start, epoch seconds) and
        rule, for event times in ``[start, end)``."""
        sql = ("SELECT (floor(extract(epoch FROM event_time) / :size) * :size)::bigint, "
               "rule, count(*) FROM compliance_flags "
               "WHERE event_time >= :start AND event_time < :end GROUP BY 1, 2")
        out: dict[int, dict[str, int]] = {}
        with self.engine.connect() as conn:
            for window, rule, n in conn.execute(text(sql), {"size": size, "start": start,
                                                            "end": end}):
                out.setdefault(int(window), {})[rule] = int(n)
        return out

    def for_transaction(self, transaction_id: str) -> list[dict[str, Any]]:
        sql = (f"SELECT {', '.join(COLUMNS)} FROM compliance_flags "
               "WHERE transaction_id = :tx ORDER BY rule")
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(text(sql), {"tx": transaction_id})]

    def review(self, transaction_id: str, rule: str, status: str, note: str,
               by: str) -> dict[str, Any]:
        """Mark one flag ``cleared`` or ``escalated`` with a note and a reviewer; returns
        the row as it now stands. A later review replaces an earlier one."""
        if status not in REVIEW_STATUSES:
            raise FlagError(f"a review sets status to {' or '.join(REVIEW_STATUSES)}, "
                            f"not {status!r}")
        if not note.strip():
            raise FlagError("a review needs a note saying why")
        if not by.strip():
            raise FlagError("a review needs a reviewer name")
        sql = (f"UPDATE compliance_flags SET status = :status, note = :note, "
               f"reviewed_by = :by, reviewed_at = now() "
               f"WHERE transaction_id = :tx AND rule = :rule RETURNING {', '.join(COLUMNS)}")
        with self.engine.begin() as conn:
            row = conn.execute(text(sql), {"status": status, "note": note, "by": by,
                                           "tx": transaction_id, "rule": rule}).first()
        if row is None:
            raise FlagNotFound(f"no {rule!r} flag on payment {transaction_id!r}")
        return dict(row._mapping)


def to_json(row: dict[str, Any]) -> dict[str, Any]:
    """A row with its times in ISO 8601, ready for ``json.dumps``."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
