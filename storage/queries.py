"""Read queries for dashboards, audits and the CLI: the PostgreSQL data access layer.

Every query is parameterized (psycopg2 binds the values; column and table names come
from constants here, never from input). Listings page by keyset (a cursor naming the
last row's sort key), so page N costs the same as page 1 on a 10-million-row table;
aggregates group on the server. ``failed_items`` has its own queries
(:mod:`storage.failed`).

Figures on 10 million payments: ``python -m benchmarks.queries`` (docs/performance.md).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from models.errors import PaymentMonitorError
from models.events import STATUSES, approval_rate, authorization_rate
from storage.postgres import StorageError

TX_COLUMNS = ("transaction_id", "event_time", "merchant_id", "customer_id", "amount_minor",
              "currency", "channel", "payment_method", "status", "decline_code", "country",
              "processing_ms", "card_bin", "risk_score", "source_partition", "source_offset")
GROUPS = ("channel", "merchant_id", "currency", "status", "payment_method", "country")
MAX_PAGE = 1000


class QueryError(PaymentMonitorError, ValueError):
    """A query the caller asked wrongly (bad cursor, range, page size or grouping)."""


@dataclass(frozen=True)
class TxFilter:
    """Filters of a transaction listing or summary; ``start`` inclusive, ``end`` exclusive
    (event time)."""

    start: datetime
    end: datetime
    merchant_id: str | None = None
    channel: str | None = None
    status: str | None = None
    currency: str | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        if self.end <= self.start:
            raise QueryError(f"the range is empty: {self.start} is not before {self.end}")
        clauses = ["event_time >= %(start)s", "event_time < %(end)s"]
        params: dict[str, Any] = {"start": self.start, "end": self.end}
        for name in ("merchant_id", "channel", "status", "currency"):
            value = getattr(self, name)
            if value is not None:
                clauses.append(f"{name} = %({name})s")
                params[name] = value
        return " AND ".join(clauses), params


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    next_cursor: str | None  # None: this was the last page


def _cursor(values: list[Any]) -> str:
    raw = json.dumps([v.isoformat() if isinstance(v, datetime) else v for v in values])
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _uncursor(cursor: str) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if not isinstance(values, list) or len(values) != 2:
            raise ValueError("not a pair")
        return values
    except (ValueError, TypeError) as exc:
        raise QueryError(f"not a cursor this API returned: {cursor!r}") from exc


def _page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise QueryError(f"page size must be 1-{MAX_PAGE}, got {limit}")
    return limit


class PaymentQueries:
    """Lookups, listings and aggregates over the metrics database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        try:
            conn = self.engine.raw_connection()
        except sa.exc.TimeoutError as exc:
            pool = self.engine.pool
            raise StorageError(
                f"all {pool.size() + pool._max_overflow} database connections are in use "  # type: ignore[attr-defined]
                f"(DB_POOL_MAX) and none came free within the pool timeout; "
                f"try again or raise DB_POOL_MAX") from exc
        try:
            cur = conn.cursor()
            yield cur
            conn.commit()
        finally:
            conn.close()

    def _rows(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self._cursor() as cur:
            cur.execute(sql, params)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    # -- lookups -------------------------------------------------------------------------

    def transaction(self, transaction_id: str) -> dict[str, Any] | None:
        rows = self._rows(f"SELECT {', '.join(TX_COLUMNS)} FROM normalized_transactions "
                          "WHERE transaction_id = %(id)s", {"id": transaction_id})
        return rows[0] if rows else None

    def metrics_of(self, transaction_id: str) -> list[dict[str, Any]]:
        """The ``dynamic_metrics`` rows of one payment (``metrics``, ``compliance``)."""
        return self._rows("SELECT id, metric_type, metric_data, config_version, created_at "
                          "FROM dynamic_metrics WHERE transaction_id = %(id)s ORDER BY id",
                          {"id": transaction_id})

    def resends(self, transaction_id: str) -> list[dict[str, Any]]:
        """The ``failed_items`` rows of records that re-sent an accepted id (duplicates),
        oldest first (``ix_failed_items_transaction_id``)."""
        return self._rows("SELECT id, error_category, error_message, source_topic, "
                          "source_partition, source_offset, first_seen_at, created_at "
                          "FROM failed_items WHERE transaction_id = %(id)s ORDER BY id",
                          {"id": transaction_id})

    def customer_payments(self, customer_id: str, start: datetime, end: datetime, *,
                          limit: int = MAX_PAGE) -> list[dict[str, Any]]:
        """One customer's payments across every merchant with event time in
        ``[start, end)``, oldest first, at most ``limit``
        (``ix_normalized_transactions_customer_event_time``)."""
        if end <= start:
            raise QueryError(f"the range is empty: {start} is not before {end}")
        return self._rows(f"SELECT {', '.join(TX_COLUMNS)} FROM normalized_transactions "
                          "WHERE customer_id = %(customer)s AND event_time >= %(start)s "
                          "AND event_time < %(end)s ORDER BY event_time, transaction_id "
                          "LIMIT %(limit)s",
                          {"customer": customer_id, "start": start, "end": end,
                           "limit": _page_size(limit)})

    # -- listings ------------------------------------------------------------------------

    def transactions(self, flt: TxFilter, *, limit: int = 100,
                     cursor: str | None = None) -> Page:
        """Payments in event-time order (then id), ``limit`` per page."""
        where, params = flt.where()
        if cursor:
            after_time, after_id = _uncursor(cursor)
            where += " AND (event_time, transaction_id) > (%(after_time)s, %(after_id)s)"
            params.update(after_time=datetime.fromisoformat(after_time), after_id=after_id)
        params["limit"] = _page_size(limit) + 1
        rows = self._rows(f"SELECT {', '.join(TX_COLUMNS)} FROM normalized_transactions "
                          f"WHERE {where} ORDER BY event_time, transaction_id "
                          f"LIMIT %(limit)s", params)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, _cursor([rows[-1]["event_time"], rows[-1]["transaction_id"]])
                    if more else None)

    def metric_rows(self, start: datetime, end: datetime, metric_type: str | None = None, *,
                    limit: int = 100, cursor: str | None = None) -> Page:
        """``dynamic_metrics`` rows created in [start, end), optionally of one type."""
        if end <= start:
            raise QueryError(f"the range is empty: {start} is not before {end}")
        where = "created_at >= %(start)s AND created_at < %(end)s"
        params: dict[str, Any] = {"start": start, "end": end}
        if metric_type is not None:
            where += " AND metric_type = %(metric_type)s"
            params["metric_type"] = metric_type
        if cursor:
            after_time, after_id = _uncursor(cursor)
            where += " AND (created_at, id) > (%(after_time)s, %(after_id)s)"
            params.update(after_time=datetime.fromisoformat(after_time), after_id=int(after_id))
        params["limit"] = _page_size(limit) + 1
        rows = self._rows("SELECT id, transaction_id, metric_type, metric_data, "
                          "config_version, created_at FROM dynamic_metrics "
                          f"WHERE {where} ORDER BY created_at, id LIMIT %(limit)s", params)
        more = len(rows) > limit
        rows = rows[:limit]
        return Page(rows, _cursor([rows[-1]["created_at"], rows[-1]["id"]]) if more else None)

    # -- aggregates ----------------------------------------------------------------------

    def summary(self, flt: TxFilter, group_by: str = "channel") -> list[dict[str, Any]]:
        """Per group: payments, each status, approval rate (approved / all), authorization
        rate (approved / (approved + declined)), amount sum and average processing time,
        over the filter's range."""
        if group_by not in GROUPS:
            raise QueryError(f"cannot group by {group_by!r} (choose from {', '.join(GROUPS)})")
        where, params = flt.where()
        statuses = ", ".join(f"count(*) FILTER (WHERE status = '{s}') AS {s}" for s in STATUSES)
        rows = self._rows(
            f"SELECT {group_by} AS key, count(*) AS payments, {statuses}, "
            "sum(amount_minor) AS amount_minor_sum, avg(processing_ms) AS avg_processing_ms "
            f"FROM normalized_transactions WHERE {where} GROUP BY {group_by} ORDER BY 1",
            params)
        for row in rows:
            row["approval_rate"] = approval_rate(row["approved"], row["payments"])
            row["authorization_rate"] = authorization_rate(row["approved"], row["declined"])
            row["avg_processing_ms"] = float(row["avg_processing_ms"])
        return rows

    def histograms(self, metric_type: str, start: datetime, end: datetime, *,
                   dimension: str = "", window_seconds: int = 300) -> list[dict[str, Any]]:
        """The windows of one metric and dimension (``aggregate_histograms``)."""
        return self._rows(
            "SELECT time_window, count, sum, min, max, p50, p95, p99, buckets "
            "FROM aggregate_histograms WHERE metric_type = %(m)s AND dimension = %(d)s "
            "AND window_seconds = %(w)s AND time_window >= %(start)s AND time_window < %(end)s "
            "ORDER BY time_window",
            {"m": metric_type, "d": dimension, "w": window_seconds, "start": start, "end": end})

    def compliance_flags(self, flt: TxFilter) -> dict[str, int]:
        """How many payments in the filter's range each compliance rule flagged."""
        where, params = flt.where()
        rows = self._rows(
            "SELECT rule.key AS rule, count(*) AS flagged "
            "FROM normalized_transactions t "
            "JOIN dynamic_metrics m ON m.transaction_id = t.transaction_id "
            "     AND m.metric_type = 'compliance' "
            "CROSS JOIN LATERAL jsonb_each_text(m.metric_data) AS rule "
            f"WHERE {where} AND rule.value = '1' "
            "GROUP BY rule.key ORDER BY rule.key", params)
        return {r["rule"]: r["flagged"] for r in rows}
