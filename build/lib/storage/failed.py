"""Reading and marking ``failed_items``: the dead-letter queue's operator side.

Used by ``faust -A app failed ...`` (:mod:`app.commands`). Every query is
parameterized; filters combine with AND.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text

from models.errors import PaymentMonitorError

_COLUMNS = ("id, raw_payload, source_key, error_category, error_message, error_field, errors, "
            "source_topic, source_partition, source_offset, retry_count, replayed, replayed_at, "
            "replay_of, first_seen_at, created_at")
_AGO = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


class FilterError(PaymentMonitorError, ValueError):
    """A filter value the CLI cannot use (bad time, unknown category)."""


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """``2026-11-22T10:00:00Z``, ``2026-11-22`` or a duration ago (``30m``, ``24h``, ``7d``)."""
    match = _AGO.match(value.strip())
    if match:
        amount, unit = match.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise FilterError(f"not a time: {value!r} (use ISO 8601 or 30m / 24h / 7d)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclass
class FailedFilter:
    """Which rows: by id, category, field, creation time, source, replay state."""

    ids: Sequence[int] = ()
    category: str | None = None
    field: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    topic: str | None = None
    partition: int | None = None
    include_replayed: bool = True
    limit: int | None = None

    def where(self) -> tuple[str, dict[str, Any]]:
        clauses: list[str] = []
        params: dict[str, Any] = {}
        if self.ids:
            clauses.append("id = ANY(:ids)")
            params["ids"] = list(self.ids)
        if self.category:
            clauses.append("error_category = :category")
            params["category"] = self.category
        if self.field:
            clauses.append("error_field = :field")
            params["field"] = self.field
        if self.since:
            clauses.append("created_at >= :since")
            params["since"] = self.since
        if self.until:
            clauses.append("created_at < :until")
            params["until"] = self.until
        if self.topic:
            clauses.append("source_topic = :topic")
            params["topic"] = self.topic
        if self.partition is not None:
            clauses.append("source_partition = :partition")
            params["partition"] = self.partition
        if not self.include_replayed:
            clauses.append("NOT replayed")
        return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


@dataclass(frozen=True)
class FailedRow:
    id: int
    raw_payload: bytes
    source_key: bytes | None
    error_category: str
    error_message: str
    error_field: str | None
    errors: list[dict[str, Any]]
    source_topic: str
    source_partition: int
    source_offset: int
    retry_count: int
    replayed: bool
    replayed_at: datetime | None
    replay_of: int | None
    first_seen_at: datetime
    created_at: datetime

    def to_dict(self, *, payload: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "error_category": self.error_category,
            "error_message": self.error_message,
            "error_field": self.error_field,
            "errors": self.errors,
            "source": f"{self.source_topic}[{self.source_partition}]@{self.source_offset}",
            "retry_count": self.retry_count,
            "replayed": self.replayed,
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
            "replay_of": self.replay_of,
            "first_seen_at": self.first_seen_at.isoformat(),
            "created_at": self.created_at.isoformat(),
        }
        if payload:
            out["raw_payload_b64"] = base64.b64encode(self.raw_payload).decode("ascii")
            out["source_key_b64"] = (base64.b64encode(self.source_key).decode("ascii")
                                     if self.source_key else None)
        return out


class FailedItems:
    """Queries over ``failed_items``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def count(self, flt: FailedFilter) -> int:
        where, params = flt.where()
        with self.engine.connect() as conn:
            return int(conn.execute(text(f"SELECT count(*) FROM failed_items{where}"),
                                    params).scalar_one())

    def by_category(self, flt: FailedFilter) -> dict[str, int]:
        where, params = flt.where()
        sql = f"SELECT error_category, count(*) FROM failed_items{where} GROUP BY 1 ORDER BY 2 DESC"
        with self.engine.connect() as conn:
            return {row[0]: int(row[1]) for row in conn.execute(text(sql), params)}

    def select(self, flt: FailedFilter, *, chunk: int = 1000) -> Iterator[FailedRow]:
        """Rows in id order, fetched ``chunk`` at a time (keyset pagination)."""
        where, params = flt.where()
        last_id, left = 0, flt.limit
        joiner = " AND " if where else " WHERE "
        while left is None or left > 0:
            size = chunk if left is None else min(chunk, left)
            sql = (f"SELECT {_COLUMNS} FROM failed_items{where}{joiner}id > :after "
                   f"ORDER BY id LIMIT :size")
            with self.engine.connect() as conn:
                rows = conn.execute(text(sql), {**params, "after": last_id, "size": size}).all()
            for row in rows:
                values = list(row)
                values[1] = bytes(values[1])
                values[2] = bytes(values[2]) if values[2] is not None else None
                yield FailedRow(*values)
            if len(rows) < size:
                return
            last_id = rows[-1][0]
            if left is not None:
                left -= len(rows)

    def get(self, item_id: int) -> FailedRow | None:
        return next(self.select(FailedFilter(ids=[item_id])), None)

    def mark_replayed(self, ids: Sequence[int]) -> None:
        """Mark rows replayed and count the attempt (the replayed message carries it)."""
        if not ids:
            return
        with self.engine.begin() as conn:
            conn.execute(text("UPDATE failed_items SET replayed = true, replayed_at = now(), "
                              "retry_count = retry_count + 1 WHERE id = ANY(:ids)"),
                         {"ids": list(ids)})
