"""The one module that owns the PostgreSQL engine and the sinks' bulk writes.

Writes go through SQLAlchemy's pool to psycopg2's ``execute_values`` (multi-row,
parameterized). Every statement is idempotent, so a batch redelivered after a
crash converges to the same rows:

- ``normalized_transactions`` and ``failed_items`` insert and ignore conflicts
  (primary key ``transaction_id``; unique source coordinates);
- ``payment_window_partials`` is upserted with absolute values from table
  state, and only forward (``last_offset`` never goes back);
- ``payment_metrics_5m`` is recomputed from the partials of the touched
  windows, under one transaction-level advisory lock so two workers writing
  the same (window, channel) cannot each miss the other's partial;
- ``dynamic_metrics`` rows are inserted only for transactions this statement
  inserted (``RETURNING``), so a replay adds none;
- ``histogram_partials`` (per source partition) and ``aggregate_histograms``
  (their merge) follow the same pattern as the window counts, written when a
  partition commits (:meth:`PostgresSink.write_windows`).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import numpy as np
import orjson
import psycopg2
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from psycopg2.extras import execute_values
from sqlalchemy.engine import Engine

from models.errors import PaymentMonitorError
from models.events import STATUSES, FailedMessage, ParsedTransaction
from pipeline.batches import SinkBatch
from pipeline.histogram import Histogram
from pipeline.metrics import BatchMetrics
from pipeline.records import clean_json, clean_text
from pipeline.windows import HistogramPartials
from storage import customer_rules
from storage.metric_rows import copy_text, metric_rows, select
from storage.payment_arrays import SCHEMA as PAYMENT_SCHEMA
from storage.payment_arrays import metadata_json, round_arrays

log = logging.getLogger(__name__)
T = TypeVar("T")

APPLICATION_NAME = "payment-monitor"
METRICS_LOCK_ID = 0x5041_594D  # "PAYM": serializes the 5-minute recompute across workers


COPY_CHUNK = 64 * 1024  # characters handed to psycopg2 per read of a COPY source


class CopyRows:
    """A COPY source over rows in COPY text format, read a chunk at a time.

    psycopg2's ``copy_expert`` reads its file in chunks, so the rows are never joined
    into one string. ``io.StringIO`` of the joined text held four bytes per character
    (its buffer is UCS-4): 40 MB for 10 MB of rows, once per sink write, which glibc
    then kept resident (docs/performance.md, "Memory").
    """

    def __init__(self, rows: Iterable[str]) -> None:
        self._rows = iter(rows)

    def read(self, size: int = -1) -> str:
        """About ``size`` characters of whole rows ("" at the end); all with ``size < 0``."""
        if size < 0:
            return "".join(self._rows)
        chunk: list[str] = []
        length = 0
        for row in self._rows:
            chunk.append(row)
            length += len(row)
            if length >= size:
                break
        return "".join(chunk)


class StorageError(PaymentMonitorError):
    """A sink write failed after every retry."""


def create_db_engine(
    url: str,
    *,
    pool_min: int = 2,
    pool_max: int = 10,
    statement_timeout_ms: int = 30_000,
    connect_timeout_s: int = 10,
    pool_timeout_s: float = 10,
) -> Engine:
    """The pooled engine: 2-10 connections, pre-ping, recycled every 5 minutes."""
    return sa.create_engine(
        url,
        pool_size=pool_min,
        max_overflow=max(0, pool_max - pool_min),
        pool_pre_ping=True,
        pool_recycle=300,
        pool_timeout=pool_timeout_s,
        connect_args={
            "application_name": APPLICATION_NAME,
            "connect_timeout": connect_timeout_s,
            "options": f"-c statement_timeout={statement_timeout_ms}",
        },
    )


TRANSIENT_ERRORS = (
    sa.exc.OperationalError,
    sa.exc.InterfaceError,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
)


@dataclass
class RetryState:
    """Whether a write is retrying now, and since when (``time.monotonic()``); read by
    the readiness probe and the metrics."""

    since: float | None = None
    attempts: int = 0

    def seconds(self, now: float | None = None) -> float:
        if self.since is None:
            return 0.0
        return (time.monotonic() if now is None else now) - self.since


def with_retries(fn: Callable[[], T], *, give_up_after: float, what: str,
                 base_delay: float = 0.5, max_delay: float = 15.0,
                 state: RetryState | None = None) -> T:
    """Call ``fn``; on a transient database error wait (0.5 s, 1 s, 2 s, ... at most
    ``max_delay``) and retry, until ``give_up_after`` seconds have passed.

    The sink calls this before it acks anything, so while PostgreSQL is away the
    worker stops fetching (back-pressure) and loses nothing; past the budget it
    raises :class:`StorageError` and the worker crashes to be restarted.
    """
    started = time.monotonic()
    attempt = 0
    state = state if state is not None else RetryState()
    try:
        while True:
            attempt += 1
            try:
                return fn()
            except TRANSIENT_ERRORS as exc:
                elapsed = time.monotonic() - started
                if not _is_transient(exc) or elapsed >= give_up_after:
                    raise StorageError(f"{what} failed after {attempt} tries in "
                                       f"{elapsed:.0f} s: {_short(exc)}") from exc
                if state.since is None:
                    state.since = started
                state.attempts = attempt
                delay = min(max_delay, base_delay * 2 ** (attempt - 1),
                            max(0.0, give_up_after - elapsed))
                log.warning("%s failed (try %d, %.0f s so far), retrying in %.1fs: %s",
                            what, attempt, elapsed, delay, _short(exc))
                time.sleep(delay)
    finally:
        state.since, state.attempts = None, 0


def _is_transient(exc: Exception) -> bool:
    # a deadlock or serialization failure is worth another try too
    code = getattr(getattr(exc, "orig", exc), "pgcode", None)
    return code in (None, "40001", "40P01", "57P01", "57P02", "57P03")


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__


# Transactions go through COPY into a session-local staging table, then one
# INSERT ... SELECT that skips replays: psycopg2 takes about 3 us per parameter to
# mogrify a multi-row INSERT (60 us a row here, in the sink thread, holding the GIL),
# while a COPY text row is one f-string (benchmarks/sinks.py).
STAGE_TRANSACTIONS = """
CREATE TEMP TABLE IF NOT EXISTS stage_transactions (
    transaction_id text, event_ts double precision, merchant_id text, customer_id text,
    amount_minor bigint, currency text, channel text, payment_method text, status text,
    decline_code text, country text, processing_ms integer, card_bin text,
    risk_score double precision, metadata jsonb, source_topic text, source_partition integer,
    source_offset bigint
) ON COMMIT DELETE ROWS
"""
COPY_TRANSACTIONS = "COPY stage_transactions FROM STDIN"
# Arrow's CSV writer quotes every value but NULL: nothing to escape, \N inside quotes is text
COPY_TRANSACTIONS_CSV = ("COPY stage_transactions FROM STDIN "
                         "(FORMAT csv, DELIMITER E'\\t', NULL '\\N')")
INSERT_TRANSACTIONS = """
INSERT INTO normalized_transactions (
    transaction_id, event_time, merchant_id, customer_id, amount_minor, currency,
    channel, payment_method, status, decline_code, country, processing_ms, card_bin,
    risk_score, metadata, source_topic, source_partition, source_offset
)
SELECT transaction_id, to_timestamp(event_ts), merchant_id, customer_id, amount_minor,
       currency, channel, payment_method, status, decline_code, country, processing_ms,
       card_bin, risk_score, metadata, source_topic, source_partition, source_offset
FROM stage_transactions
ORDER BY transaction_id
ON CONFLICT (transaction_id) DO NOTHING
RETURNING transaction_id
"""

# The duplicate check's final authority (models.db.TransactionClaim): each batch's ids are
# claimed before they are counted, in one round trip: two statements sent together, the
# batches as one JSON text ({partition: [[id, offset], ...]}, made by orjson; psycopg2
# quoted a list parameter's every item holding the GIL, 3 µs an id). Two statements, not
# one with a CTE: under READ COMMITTED the second takes a new snapshot, so it sees a claim
# that a concurrent worker committed while the INSERT waited on it. Each id is looked up
# by the primary key whatever the table's statistics say: the LATERAL subquery with LIMIT
# 1 is never flattened into a join, which the planner made a hash join over the whole
# table (12-14 ms per batch on a table of 200,000 claims, more as it grows).
_CLAIMED_ROWS = """(
    SELECT e->>0 AS transaction_id, p.key::int AS source_partition,
           (e->>1)::bigint AS source_offset
    FROM jsonb_each(%(batches)s::jsonb) AS p, jsonb_array_elements(p.value) AS e
) s"""
CLAIM_INSERT = f"""
INSERT INTO transaction_claims (transaction_id, source_topic, source_partition, source_offset)
SELECT s.transaction_id, %(topic)s, s.source_partition, s.source_offset
FROM {_CLAIMED_ROWS}
ORDER BY s.transaction_id, s.source_partition
ON CONFLICT (transaction_id) DO NOTHING
"""
CLAIM_SELECT = f"""
SELECT s.source_partition, c.transaction_id, c.source_topic, c.source_partition,
       c.source_offset
FROM {_CLAIMED_ROWS}
CROSS JOIN LATERAL (
    SELECT * FROM transaction_claims t WHERE t.transaction_id = s.transaction_id LIMIT 1
) c
WHERE NOT (c.source_topic = %(topic)s AND c.source_partition = s.source_partition
           AND c.source_offset = s.source_offset)
"""
CLAIM = f"{CLAIM_INSERT};{CLAIM_SELECT}"

COPY_METRICS = ("COPY dynamic_metrics (transaction_id, metric_type, metric_data, "
                "config_version) FROM STDIN")

# One row per flagged payment and rule, for the payments this transaction stored first
# (so a replay adds none); DO NOTHING keeps a review whatever happens.
# The rows come as one JSON text (orjson; psycopg2's execute_values formatted each value
# of each row holding the GIL), in key order.
INSERT_FLAGS = """
INSERT INTO compliance_flags (
    transaction_id, rule, customer_id, merchant_id, event_time, amount_minor, currency,
    config_version, evidence
)
SELECT e->>0, e->>1, e->>2, e->>3, (e->>4)::timestamptz, (e->>5)::bigint, e->>6, e->>7,
       (e->>8)::jsonb
FROM jsonb_array_elements(%s::jsonb) AS e
ORDER BY e->>0, e->>1
ON CONFLICT (transaction_id, rule) DO NOTHING
"""
FLAGS_PER_STATEMENT = 5000


def insert_flags(cur: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``compliance_flags`` rows ``(transaction_id, rule, customer_id, merchant_id,
    event_time (aware), amount_minor, currency, config_version, evidence as JSON text)``
    but those already flagged."""
    for at in range(0, len(rows), FLAGS_PER_STATEMENT):
        chunk = orjson.dumps(rows[at:at + FLAGS_PER_STATEMENT], option=orjson.OPT_NAIVE_UTC)
        cur.execute(INSERT_FLAGS, (chunk.decode(),))


# A window ``reprocess`` rebuilt (``rebuilt_windows``) keeps its rows: a worker still
# holding it (a late payment before its expiry, a replay) writes only its late_events and
# failed rows, which record arrivals (storage/window_rebuild.py).
_NOT_REBUILT = """NOT EXISTS (
    SELECT 1 FROM rebuilt_windows r WHERE r.window_seconds = v.window_seconds
    AND r.window_start = v.window_start AND r.source_partition = v.source_partition)"""

# The windows' rows reach PostgreSQL by COPY into a staging table, formatted by one
# f-string a row (floats by repr, which PostgreSQL reads back to the same double, inf and
# nan included); execute_values adapted every value of every row holding the GIL.
_PARTIAL_COLUMNS = ("window_seconds, window_start, metric_type, dimension, source_partition, "
                    "buckets, count, sum, min, max, last_offset")


def _staging(table: str, columns: str) -> tuple[str, str]:
    """A staging table's CREATE (temporary, emptied at each commit) and its COPY."""
    return (f"CREATE TEMP TABLE IF NOT EXISTS {table} ({columns}) ON COMMIT DELETE ROWS",
            f"COPY {table} FROM STDIN")


STAGE_HISTOGRAM_PARTIALS, COPY_HISTOGRAM_PARTIALS = _staging(
    "stage_histogram_partials",
    "window_seconds int, window_start timestamptz, metric_type text, dimension text, "
    "source_partition int, buckets jsonb, count bigint, sum float8, min float8, max float8, "
    "last_offset bigint")
UPSERT_HISTOGRAM_PARTIALS = f"""
INSERT INTO histogram_partials ({_PARTIAL_COLUMNS})
SELECT {_PARTIAL_COLUMNS} FROM stage_histogram_partials v
WHERE v.metric_type IN ('late_events', 'failed') OR {_NOT_REBUILT}
ORDER BY v.window_seconds, v.window_start, v.metric_type, v.dimension, v.source_partition
ON CONFLICT (window_seconds, window_start, metric_type, dimension, source_partition)
DO UPDATE SET
    buckets = EXCLUDED.buckets, count = EXCLUDED.count, sum = EXCLUDED.sum,
    min = EXCLUDED.min, max = EXCLUDED.max, last_offset = EXCLUDED.last_offset,
    updated_at = now()
WHERE histogram_partials.last_offset <= EXCLUDED.last_offset
"""
PARTIALS_TEMPLATE = ("(%s::int,%s::timestamptz,%s::text,%s::text,%s::int,%s::jsonb,%s::bigint,"
                     "%s::float8,%s::float8,%s::float8,%s::bigint)")

# Every partition's rows of the windows the staged partials touch, looked up by key: the
# keys come from the staging table in the same transaction (no parameters for psycopg2 to
# quote, holding the GIL, a value at a time), and OFFSET 0 keeps the planner from
# flattening the lookup into a join over all of histogram_partials (the staging table has
# no statistics). The buckets come as text, for orjson.
SELECT_HISTOGRAM_PARTIALS = """
SELECT p.window_seconds, p.window_start, p.metric_type, p.dimension,
       p.buckets::text, p.count, p.sum, p.min, p.max
FROM (SELECT DISTINCT window_seconds, window_start, metric_type, dimension
      FROM stage_histogram_partials) k
CROSS JOIN LATERAL (
    SELECT * FROM histogram_partials h
    WHERE h.window_seconds = k.window_seconds AND h.window_start = k.window_start
      AND h.metric_type = k.metric_type AND h.dimension = k.dimension
    OFFSET 0) p
ORDER BY p.window_seconds, p.window_start, p.metric_type, p.dimension, p.source_partition
"""

_AGGREGATE_COLUMNS = ("metric_type, dimension, time_window, window_seconds, buckets, count, "
                      "sum, min, max, p50, p95, p99")
STAGE_AGGREGATE_HISTOGRAMS, COPY_AGGREGATE_HISTOGRAMS = _staging(
    "stage_aggregate_histograms",
    "metric_type text, dimension text, time_window timestamptz, window_seconds int, "
    "buckets jsonb, count bigint, sum float8, min float8, max float8, p50 float8, "
    "p95 float8, p99 float8")
UPSERT_AGGREGATE_HISTOGRAMS = f"""
INSERT INTO aggregate_histograms ({_AGGREGATE_COLUMNS})
SELECT {_AGGREGATE_COLUMNS} FROM stage_aggregate_histograms
ORDER BY metric_type, dimension, time_window, window_seconds
ON CONFLICT (metric_type, dimension, time_window, window_seconds) DO UPDATE SET
    buckets = EXCLUDED.buckets, count = EXCLUDED.count, sum = EXCLUDED.sum,
    min = EXCLUDED.min, max = EXCLUDED.max, p50 = EXCLUDED.p50, p95 = EXCLUDED.p95,
    p99 = EXCLUDED.p99, updated_at = now()
"""

INSERT_FAILED = """
INSERT INTO failed_items (
    raw_payload, error_category, error_message, source_topic, source_partition,
    source_offset, retry_count, error_field, errors, first_seen_at, replay_of, source_key,
    transaction_id
) VALUES %s
ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING
"""

_COUNT_COLUMNS = ("window_seconds, window_start, channel, source_partition, tx_count, "
                  f"{', '.join(f'{s}_count' for s in STATUSES)}, amount_minor_sum, last_offset")
UPSERT_PARTIALS = f"""
INSERT INTO payment_window_partials ({_COUNT_COLUMNS})
SELECT * FROM (VALUES %s) AS v({_COUNT_COLUMNS}) WHERE {_NOT_REBUILT}
ON CONFLICT (window_seconds, window_start, channel, source_partition) DO UPDATE SET
    tx_count = EXCLUDED.tx_count,
    {", ".join(f"{s}_count = EXCLUDED.{s}_count" for s in STATUSES)},
    amount_minor_sum = EXCLUDED.amount_minor_sum,
    last_offset = EXCLUDED.last_offset,
    updated_at = now()
WHERE payment_window_partials.last_offset <= EXCLUDED.last_offset
"""

COUNTS_TEMPLATE = ("(%s::int,%s::timestamptz,%s::text,%s::int,%s::bigint,"
                   + "%s::bigint," * len(STATUSES) + "%s::numeric,%s::bigint)")

# ``payment_metrics_5m`` holds the finest window size (WINDOW_SIZES' smallest, 300 s
# by default), passed as ``%(size)s``.
RECOMPUTE_5M = f"""
INSERT INTO payment_metrics_5m (
    window_start, channel, tx_count, {", ".join(f"{s}_count" for s in STATUSES)},
    amount_minor_sum, updated_at
)
SELECT p.window_start, p.channel, sum(p.tx_count),
       {", ".join(f"sum(p.{s}_count)" for s in STATUSES)}, sum(p.amount_minor_sum), now()
FROM payment_window_partials p
JOIN unnest(%(starts)s::timestamptz[], %(channels)s::text[]) AS k(window_start, channel)
  ON p.window_start = k.window_start AND p.channel = k.channel
WHERE p.window_seconds = %(size)s
GROUP BY p.window_start, p.channel
ON CONFLICT (window_start, channel) DO UPDATE SET
    tx_count = EXCLUDED.tx_count,
    {", ".join(f"{s}_count = EXCLUDED.{s}_count" for s in STATUSES)},
    amount_minor_sum = EXCLUDED.amount_minor_sum,
    updated_at = now()
"""


@contextlib.contextmanager
def _transaction(engine: Engine) -> Iterator[Any]:
    """A cursor on a pooled psycopg2 connection, committed at the end, rolled back on an
    error; a connection that was lost is invalidated, not returned to the pool."""
    raw = engine.raw_connection()
    try:
        yield raw.cursor()
        raw.commit()
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        raw.invalidate()
        raise
    except BaseException:
        raw.rollback()
        raise
    finally:
        raw.close()


def _ts(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class PostgresSink:
    """Writes whole sink batches in one transaction per call."""

    def __init__(self, engine: Engine, *, give_up_after: float = 300.0,
                 finest_window: int = 300) -> None:
        self.engine = engine
        self.give_up_after = give_up_after
        self.finest_window = finest_window  # the window size payment_metrics_5m holds
        self.retry = RetryState()
        self.claiming_since: float | None = None  # time.monotonic() a claim call began
        self._flagged: Counter[str] = Counter()  # compliance flags of stored payments
        self._flag_lock = threading.Lock()  # written by the sink thread, read by scrapes
        # the duplicate check's own connection, held and in autocommit: a claim is one
        # round trip (no pool checkout with its ping, no BEGIN, no COMMIT of its own)
        self._claimer: Any = None
        self._claimer_lock = threading.Lock()

    def compliance_flags(self) -> dict[str, int]:
        """Payments each compliance rule flagged, counted when first stored (a replay
        stores nothing new, so counts nothing twice)."""
        with self._flag_lock:
            return dict(self._flagged)

    def claim(self, topic: str, partition: int,
              entries: Sequence[tuple[str, int]]) -> dict[str, tuple[str, int, int]]:
        """Claim each ``(transaction_id, offset)`` of one partition's batch (each id once)
        for this record; returns, for the ids another record claimed first, that record's
        ``(topic, partition, offset)``. A record claiming again (a redelivery, a replay
        after a crash or a takeover) finds its own claim and is not in the answer.
        Retried on connection loss like every write."""
        return self.claim_many(topic, {partition: entries}).get(partition, {})

    def claim_many(self, topic: str, batches: Mapping[int, Sequence[tuple[str, int]]],
                   ) -> dict[int, dict[str, tuple[str, int, int]]]:
        """:meth:`claim` for the batches of several partitions (one fetch) in one round
        trip; per partition, the ids another record claimed first. An id in the batches
        of two partitions goes to the lower partition."""
        if not any(batches.values()):
            return {}
        self.claiming_since = time.monotonic()  # the readiness probe watches a hung call
        try:
            return with_retries(lambda: self._claim_once(topic, batches),
                                give_up_after=self.give_up_after,
                                what="PostgreSQL duplicate check", state=self.retry)
        finally:
            self.claiming_since = None

    def _claim_once(self, topic: str, batches: Mapping[int, Sequence[tuple[str, int]]],
                    ) -> dict[int, dict[str, tuple[str, int, int]]]:
        params = {"topic": topic, "batches": orjson.dumps(
            {str(p): entries for p, entries in batches.items()}).decode()}
        out: dict[int, dict[str, tuple[str, int, int]]] = {}
        with self._claimer_lock:
            if self._claimer is None:
                raw = self.engine.raw_connection()
                driver: Any = raw.driver_connection
                driver.rollback()  # the pool's ping may have begun a transaction
                driver.autocommit = True
                self._claimer = raw
            try:
                # both statements in one message: PostgreSQL runs them as one transaction
                cur = self._claimer.cursor()
                cur.execute(CLAIM, params)
                rows = cur.fetchall()
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                self._claimer.invalidate()  # lost: the next try connects afresh
                self._claimer = None
                raise
        for mine, tx_id, t, p, o in rows:
            out.setdefault(mine, {})[tx_id] = (t, int(p), int(o))
        return out

    def write(self, batches: Sequence[SinkBatch]) -> dict[str, int]:
        """Store ``batches`` durably (retried on connection loss); returns rows per table."""
        return with_retries(lambda: self._write_once(batches), give_up_after=self.give_up_after,
                            what="PostgreSQL sink write", state=self.retry)

    def _write_once(self, batches: Sequence[SinkBatch]) -> dict[str, int]:
        staged = 0  # payments
        # per batch with metrics: its metric columns, payments' ids and COPY rows' version
        metric_sets: list[tuple[BatchMetrics, list[str], SinkBatch]] = []
        failed_rows: list[tuple[Any, ...]] = []
        partials: dict[tuple[int, int, str, int], tuple[Any, ...]] = {}
        flags: dict[str, tuple[ParsedTransaction, SinkBatch, dict[str, Any]]] = {}
        # the payments each set of customer-scope rules judges (one set per config version)
        judged: dict[tuple[str, tuple[Any, ...]], list[ParsedTransaction]] = {}
        for batch in batches:
            if batch.customer_rules and batch.payments:
                judged.setdefault((batch.config_version, batch.customer_rules), []).extend(
                    batch.payments.values())
            staged += len(batch.payments)
            metrics = batch.metrics
            if metrics is not None and len(metrics):
                payments = metrics.cols.payments
                metric_sets.append((metrics, [p.transaction_id for p in payments], batch))
                for i, evidence in metrics.evidence.items():
                    flags[payments[i].transaction_id] = (payments[i], batch, evidence)
            for f in batch.failed:
                failed_rows.append(_failed_row(f))
            for row in batch.window_rows:
                c = row.counts
                # later batches of the same key replace earlier ones: absolute values
                partials[(row.window_seconds, row.window_start, row.channel, row.partition)] = (
                    row.window_seconds, _ts(row.window_start), row.channel, row.partition,
                    c.tx_count, *(c.by_status.get(s, 0) for s in STATUSES),
                    c.amount_minor_sum, c.last_offset,
                )
        flagged: Counter[str] = Counter()
        flag_rows: list[tuple[Any, ...]] = []
        judged_flags: list[str] = []  # the rule of each customer-scope flag inserted
        with _transaction(self.engine) as cur:
            metric_rows = 0
            if staged:
                cur.execute(STAGE_TRANSACTIONS)
                statement, source = _transaction_copy(batches)
                cur.copy_expert(statement, source, size=COPY_CHUNK)
                if judged:  # held to the commit: the other writers of these customers wait
                    cur.execute(customer_rules.LOCK_CUSTOMERS)
                cur.execute(INSERT_TRANSACTIONS)
                inserted = [r[0] for r in cur.fetchall()]
                rows = _metric_rows(inserted, metric_sets, flagged)
                if rows:
                    cur.copy_expert(COPY_METRICS, io.BytesIO(rows), size=COPY_CHUNK)
                metric_rows = rows.count(b"\n")
                new = set(inserted)
                for (version, rules), stored in judged.items():
                    mine = [p for p in stored if p.transaction_id in new]
                    if mine:  # flagged in PostgreSQL, evidence and all
                        judged_flags += customer_rules.judge(cur, rules, mine, version)
                # the per-event rules' flags are counted with their metric rows
                flagged.update(f"compliance_{rule}" for rule in judged_flags)
                flag_rows = _flag_rows([flags[tx_id] for tx_id in inserted if tx_id in flags])
                if flag_rows:
                    insert_flags(cur, flag_rows)
            if failed_rows:
                execute_values(cur, INSERT_FAILED, failed_rows, page_size=1000)
            if partials:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (METRICS_LOCK_ID,))
                execute_values(cur, UPSERT_PARTIALS, sorted(partials.values()),
                               template=COUNTS_TEMPLATE, page_size=1000)
                keys = sorted({(k[1], k[2]) for k in partials if k[0] == self.finest_window})
                if keys:
                    cur.execute(RECOMPUTE_5M, {"starts": [_ts(k[0]) for k in keys],
                                               "channels": [k[1] for k in keys],
                                               "size": self.finest_window})
        if flagged:  # committed: these payments are stored for the first time
            with self._flag_lock:
                self._flagged.update(flagged)
        return {
            "normalized_transactions": staged,
            "dynamic_metrics": metric_rows,
            "compliance_flags": len(flag_rows) + len(judged_flags),
            "failed_items": len(failed_rows),
            "payment_window_partials": len(partials),
        }

    def write_windows(self, partials: HistogramPartials) -> dict[str, int]:
        """Upsert histogram partials and recompute the merged ``aggregate_histograms`` rows
        of the windows they touch (retried on connection loss)."""
        if not partials:
            return {}
        return with_retries(lambda: self._write_windows_once(partials),
                            give_up_after=self.give_up_after, what="PostgreSQL window write",
                            state=self.retry)

    def _write_windows_once(self, hp: HistogramPartials) -> dict[str, int]:
        partials = hp.rows
        with _transaction(self.engine) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (METRICS_LOCK_ID,))
            _upsert_staged(cur, STAGE_HISTOGRAM_PARTIALS, COPY_HISTOGRAM_PARTIALS,
                           UPSERT_HISTOGRAM_PARTIALS, partials)
            cur.execute(SELECT_HISTOGRAM_PARTIALS)
            # every metric selected is one of the partials' own: their bounds apply
            merged = merge_aggregates(cur, cur.fetchall(), hp.bounds.__getitem__)
        return {"histogram_partials": len(partials), "aggregate_histograms": merged}


def merge_aggregates(cur: Any, partials: Iterable[Sequence[Any]],
                     bounds: Callable[[str], Sequence[float]]) -> int:
    """Upsert the ``aggregate_histograms`` rows merged from ``partials``: rows of
    ``(window_seconds, window_start, metric, dimension, buckets, count, sum, min, max)``,
    the buckets as JSON text, in a fixed order (by window, metric, dimension and
    partition, so float sums add the same way every time). Returns the rows written."""
    merged: dict[tuple, Histogram] = {}
    for ws, start, metric, dim, counts, count, total, lo, hi in partials:
        part = Histogram.from_list(bounds(metric), [orjson.loads(counts), count, total, lo, hi])
        key = (ws, start, metric, dim)
        if key in merged:
            merged[key].merge(part)
        else:
            merged[key] = part
    rows = [(metric, dim, start, ws, orjson.dumps(h.bucket_dict()).decode(), h.count,
             h.sum, h.min, h.max, h.quantile(0.5), h.quantile(0.95), h.quantile(0.99))
            for (ws, start, metric, dim), h in sorted(merged.items())]
    _upsert_staged(cur, STAGE_AGGREGATE_HISTOGRAMS, COPY_AGGREGATE_HISTOGRAMS,
                   UPSERT_AGGREGATE_HISTOGRAMS, rows)
    return len(rows)


def _upsert_staged(cur: Any, stage: str, copy: str, upsert: str,
                   rows: Iterable[Sequence[Any]]) -> None:
    """COPY ``rows`` into their staging table, then move them on with ``upsert``."""
    cur.execute(stage)
    cur.copy_expert(copy, CopyRows(map(_copy_row, rows)), size=COPY_CHUNK)
    cur.execute(upsert)


def _copy_row(values: Sequence[Any]) -> str:
    """One row in COPY text format: numbers by ``repr`` (exact), times in ISO 8601 with
    their offset, None as NULL, text escaped."""
    return "\t".join(map(_copy_value, values)) + "\n"


def _copy_value(value: Any) -> str:
    if value is None:
        return NULL
    if type(value) is str:
        return copy_text(value)
    if type(value) is datetime:
        return value.isoformat()
    return repr(value)


def _metric_rows(inserted: Sequence[str],
                 sets: Sequence[tuple[BatchMetrics, list[str], SinkBatch]],
                 flagged: Counter[str]) -> bytes:
    """The ``dynamic_metrics`` COPY input of the newly inserted payments, in the order
    inserted (:func:`storage.metric_rows.metric_rows`); counts the per-event rules'
    flags of those payments into ``flagged`` (rule metric -> payments)."""
    if not sets:
        return b""
    where: dict[str, tuple[int, int]] = {}  # id -> (set, position); a later set wins
    for k, (_, ids, _) in enumerate(sets):
        where.update(zip(ids, zip(itertools.repeat(k, len(ids)), range(len(ids)),
                                  strict=True), strict=True))
    found = [w for w in map(where.get, inserted) if w is not None]
    if not found:
        return b""
    at = np.array(found, np.int64).reshape(-1, 2)
    for k, (metrics, _, _) in enumerate(sets):
        positions = at[:, 1][at[:, 0] == k]
        if len(positions):
            flagged.update(metrics.flagged(positions))
    # the sets of one engine and version, one after another, as one (a sink round at
    # 5,000 events/s holds about 150 small batches; each set's fixed cost was a tenth of
    # the worker's samples there): the same rows, in the same order
    parts: list[list[bytes]] = []
    for (_, version), run in itertools.groupby(
            sets, key=lambda s: (id(s[0].shapes), s[2].config_version)):
        group = list(run)
        merged = BatchMetrics.concat([metrics for metrics, _, _ in group])
        if merged is None:
            parts += [metric_rows(metrics, ids, version) for metrics, ids, _ in group]
        else:
            parts.append(metric_rows(merged, [i for _, ids, _ in group for i in ids], version))
    first = np.cumsum([0] + [len(ids) for _, ids, _ in sets[:-1]])
    flat = parts[0] if len(parts) == 1 else [row for part in parts for row in part]
    return select(flat, (first[at[:, 0]] + at[:, 1]).tolist())


def _flag_rows(flags: Sequence[tuple[ParsedTransaction, SinkBatch, dict[str, Any]]],
               ) -> list[tuple[Any, ...]]:
    """``compliance_flags`` rows of newly stored payments: one per per-event rule that
    flagged one, with its evidence."""
    return [(p.transaction_id, rule, clean_text(p.customer_id), clean_text(p.merchant_id),
             p.event_time, p.amount_minor, p.currency, batch.config_version,
             orjson.dumps(reason).decode())
            for p, batch, evidence in flags for rule, reason in sorted(evidence.items())]


def _failed_row(f: FailedMessage) -> tuple[Any, ...]:
    """One ``failed_items`` row. Its text comes from hostile input (field names, values
    in messages), so it is made storable whatever it holds: PostgreSQL ``text`` and
    ``jsonb`` refuse NUL, and nothing encodes a lone surrogate."""
    return (f.raw, f.category.value, clean_text(f.message), f.topic, f.partition, f.offset,
            f.retry_count, None if f.field is None else clean_text(f.field),
            clean_json([e.to_dict() for e in f.errors]), f.first_seen, f.replay_of, f.key,
            None if f.transaction_id is None else clean_text(f.transaction_id))


NULL = "\\N"  # COPY text format's NULL


_CSV = pa_csv.WriteOptions(include_header=False, delimiter="\t", null_string=NULL,
                           quoting_style="all_valid")


def _transaction_copy(batches: Sequence[SinkBatch]) -> tuple[str, Any]:
    """The COPY statement and input that stage the batches' payments, in order.

    Made a column at a time by Arrow's CSV writer, which quotes every value but NULL (so
    nothing needs escaping) and writes numbers in their shortest form that reads back the
    same; a row at a time by :func:`_transaction_row` only if a value does not fit its
    column's Arrow type (an integer beyond 64 bits, which PostgreSQL refuses as well)."""
    mine = [b for b in batches if b.payments]
    payments = round_arrays(mine)  # each batch keeps its part: the lake takes it
    if payments is None:
        return COPY_TRANSACTIONS, CopyRows(
            _transaction_row(p, copy_text(b.topic), b.partition, offset)
            for b in mine for offset, p in b.payments.items())
    columns = dict(zip(PAYMENT_SCHEMA.names, payments.columns, strict=True))
    which = pa.array(np.repeat(np.arange(len(mine)), [len(b.payments) for b in mine]))
    columns["source_topic"] = pa.array([b.topic for b in mine], pa.string()).take(which)
    columns["source_partition"] = pa.array([b.partition for b in mine], pa.int32()).take(which)
    columns["source_offset"] = pa.array([o for b in mine for o in b.payments], pa.int64())
    out = pa.BufferOutputStream()
    pa_csv.write_csv(pa.table(columns), out, _CSV)
    return COPY_TRANSACTIONS_CSV, pa.BufferReader(out.getvalue())


def _transaction_row(p: ParsedTransaction, topic: str, partition: int, offset: int) -> str:
    """One ``stage_transactions`` row in COPY text format."""
    metadata = metadata_json(p)
    metadata = NULL if metadata is None else copy_text(metadata)
    return (f"{copy_text(p.transaction_id)}\t{p.event_ts!r}\t{copy_text(p.merchant_id)}\t"
            f"{copy_text(p.customer_id)}\t{p.amount_minor}\t{copy_text(p.currency)}\t"
            f"{copy_text(p.channel)}\t{copy_text(p.payment_method)}\t{p.status.value}\t"
            f"{_optional(p.decline_code)}\t{copy_text(p.country)}\t{p.processing_ms}\t"
            f"{_optional(p.card_bin)}\t"
            f"{NULL if p.risk_score is None else repr(p.risk_score)}\t{metadata}\t"
            f"{topic}\t{partition}\t{offset}\n")


def _optional(value: str | None) -> str:
    return NULL if value is None else copy_text(value)


