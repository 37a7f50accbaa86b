"""failed_items: stored with their errors, filtered by the CLI's queries, purged by age."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from devtools.stack import FAUST
from models.events import ErrorCategory, FailedMessage, ValidationError
from pipeline.batches import SinkBatch
from storage.failed import FailedFilter, FailedItems, FilterError, parse_time
from storage.postgres import PostgresSink, create_db_engine
from storage.retention import purge_failed_items

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


class Msg:
    def __init__(self, offset: int) -> None:
        self.offset = offset


def failure(offset: int, category: ErrorCategory, field: str | None, partition: int = 0):
    return FailedMessage(
        raw=f"raw-{offset}".encode() + b"\xff", category=category,
        errors=(ValidationError(field, "rule", f"{field} is wrong at {offset}", "'x'"),),
        topic="payments", partition=partition, offset=offset, first_seen=NOW,
        key=b"m00001" if offset % 2 else None)


@pytest.fixture
def store(database_url):
    engine = create_db_engine(database_url)
    failed = [failure(0, ErrorCategory.SCHEMA, "currency"),
              failure(1, ErrorCategory.RULE, "currency"),
              failure(2, ErrorCategory.RULE, "decline_code"),
              failure(3, ErrorCategory.DUPLICATE, "transaction_id", partition=1),
              failure(4, ErrorCategory.NOT_JSON, None)]
    batch = SinkBatch("payments", 0, [Msg(f.offset) for f in failed], {}, failed, [],
                      time.time())
    PostgresSink(engine).write([batch])
    PostgresSink(engine).write([batch])  # a replay adds nothing
    return FailedItems(engine), database_url


def test_rows_keep_bytes_key_and_structured_errors(store):
    items, _ = store
    rows = list(items.select(FailedFilter()))
    assert [r.source_offset for r in rows] == [0, 1, 2, 3, 4]
    assert rows[1].raw_payload == b"raw-1\xff" and rows[1].source_key == b"m00001"
    assert rows[0].source_key is None
    assert rows[1].errors == [{"field": "currency", "rule": "rule",
                               "message": "currency is wrong at 1", "value": "'x'"}]
    assert rows[1].error_field == "currency" and rows[4].error_field is None
    assert rows[1].first_seen_at == NOW


@pytest.mark.parametrize(("flt", "offsets"), [
    (FailedFilter(category="rule"), [1, 2]),
    (FailedFilter(field="currency"), [0, 1]),
    (FailedFilter(category="rule", field="currency"), [1]),
    (FailedFilter(partition=1), [3]),
    (FailedFilter(topic="other"), []),
    (FailedFilter(limit=2), [0, 1]),
    (FailedFilter(since=NOW + timedelta(days=3650)), []),
])
def test_filters(store, flt, offsets):
    items, _ = store
    assert [r.source_offset for r in items.select(flt, chunk=2)] == offsets


def test_ids_counts_and_categories(store):
    items, _ = store
    ids = [r.id for r in items.select(FailedFilter())]
    assert [r.id for r in items.select(FailedFilter(ids=ids[1:3]))] == ids[1:3]
    assert items.count(FailedFilter(category="rule")) == 2
    assert items.by_category(FailedFilter()) == {"rule": 2, "schema": 1, "duplicate": 1,
                                                 "not_json": 1}
    assert items.get(ids[0]).source_offset == 0 and items.get(-1) is None


def test_replay_marking_counts_attempts_and_hides_rows(store):
    items, _ = store
    first = next(items.select(FailedFilter()))
    items.mark_replayed([first.id])
    items.mark_replayed([first.id])
    again = items.get(first.id)
    assert again.replayed and again.retry_count == 2 and again.replayed_at is not None
    pending = list(items.select(FailedFilter(include_replayed=False)))
    assert first.id not in [r.id for r in pending] and len(pending) == 4


def test_a_filter_value_cannot_inject_sql(store):
    items, _ = store
    assert list(items.select(FailedFilter(category="rule' OR '1'='1"))) == []


def test_retention_deletes_only_old_rows_in_batches(store):
    items, _ = store
    with items.engine.begin() as conn:
        aged = conn.execute(text("UPDATE failed_items SET created_at = now() - "
                                 "interval '200 days' WHERE source_offset < 3")).rowcount
    assert aged == 3
    assert purge_failed_items(items.engine, 180, batch=2) == 3
    assert [r.source_offset for r in items.select(FailedFilter())] == [3, 4]
    assert purge_failed_items(items.engine, 180) == 0


def test_times_for_the_cli():
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_time("24h", now) == now - timedelta(hours=24)
    assert parse_time("30m", now) == now - timedelta(minutes=30)
    assert parse_time("7d", now) == now - timedelta(days=7)
    assert parse_time("2026-11-01T10:00:00Z") == datetime(2026, 11, 1, 10, tzinfo=UTC)
    assert parse_time("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(FilterError, match="not a time"):
        parse_time("yesterday")


@pytest.mark.parametrize(("args", "env", "words"), [
    (["list"], {"DATABASE_URL": "postgresql+psycopg2://u:s3cret@127.0.0.1:1/x"},
     "error: cannot reach the database at postgresql+psycopg2://u:***@127.0.0.1:1/x"),
    (["list", "--since", "yesterday"], {}, "error: not a time: 'yesterday'"),
    (["show"], {}, "error: show takes exactly one id"),
    (["export"], {}, "error: export needs --output FILE"),
])
def test_cli_errors_are_one_line_without_secrets(tmp_path, args, env, words):
    environ = {**os.environ, "APP_DATADIR": str(tmp_path), **env}
    done = subprocess.run([FAUST, "-A", "app", "failed", *args], env=environ, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert words in done.stderr
    assert "Traceback" not in done.stderr and "s3cret" not in done.stderr + done.stdout
