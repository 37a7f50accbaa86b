"""Retention of every PostgreSQL table, from one policy (storage/retention.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2

from devtools.services import libpq_dsn
from runtime.settings import Settings
from storage.postgres import create_db_engine
from storage.retention import RETENTION, purge_database
from tests.helpers import query

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def insert(url: str, days_ago: dict[str, list[int]]) -> None:
    conn = psycopg2.connect(libpq_dsn(url))
    cur = conn.cursor()
    for i, age in enumerate(days_ago["transactions"]):
        t = NOW - timedelta(days=age)
        cur.execute(
            "INSERT INTO normalized_transactions VALUES (%s, %s, 'm', 'c', 1, 'EUR', 'pos', "
            "'card', 'approved', NULL, 'DE', 1, NULL, NULL, NULL, 'payments', 0, %s, %s)",
            (f"tx{i}", t, i, t))
        cur.execute("INSERT INTO dynamic_metrics (transaction_id, metric_type, metric_data, "
                    "created_at) VALUES (%s, 'metrics', '{}', %s)", (f"tx{i}", t))
    for i, age in enumerate(days_ago["histograms"]):
        t = NOW - timedelta(days=age)
        cur.execute("INSERT INTO aggregate_histograms (metric_type, dimension, time_window, "
                    "window_seconds, buckets, count, sum) VALUES (%s, '', %s, 300, '{}', 1, 1)",
                    (f"m{i}", t))
        cur.execute("INSERT INTO histogram_partials VALUES (300, %s, %s, '', 0, '[1]', 1, 1, "
                    "1, 1, 0, now())", (t, f"m{i}"))
    for i, age in enumerate(days_ago["failed"]):
        cur.execute("INSERT INTO failed_items (raw_payload, error_category, error_message, "
                    "source_topic, source_partition, source_offset, created_at) "
                    "VALUES ('x', 'schema', 'bad', 'payments', 0, %s, %s)",
                    (i, NOW - timedelta(days=age)))
    conn.commit()
    conn.close()


def test_each_table_keeps_its_own_period(database_url):
    insert(database_url, {"transactions": [1, 364, 366, 400], "histograms": [1, 729, 731],
                          "failed": [10, 181]})
    deleted = purge_database(create_db_engine(database_url), Settings(), now=NOW)
    assert deleted == {"failed_items": 1, "normalized_transactions": 2, "dynamic_metrics": 0,
                       "aggregate_histograms": 1, "histogram_partials": 1, "rebuilt_windows": 0}
    # a transaction's metrics go with it (ON DELETE CASCADE) ...
    assert query(database_url, "SELECT transaction_id FROM dynamic_metrics "
                               "ORDER BY 1") == [("tx0",), ("tx1",)]
    assert query(database_url, "SELECT count(*) FROM aggregate_histograms") == [(2,)]
    assert query(database_url, "SELECT count(*) FROM histogram_partials") == [(2,)]
    # ... and nothing is left to do on the next run
    assert set(purge_database(create_db_engine(database_url), Settings(),
                              now=NOW).values()) == {0}


def test_every_retention_column_is_indexed(database_url):
    """A batch of the purge is an index range scan, not a sequential scan of the table."""
    indexed = {(r[0], r[1]) for r in query(database_url, """
        SELECT t.relname, a.attname FROM pg_index i
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = i.indkey[0]""")}
    for table, (column, _) in RETENTION.items():
        assert (table, column) in indexed, f"{table}.{column} has no index"
