"""What PostgreSQL spends on a ``dynamic_metrics`` row: ``python -m benchmarks.metric_copy``.

Stores ``--payments`` simulator payments with their metrics through the sink (a fresh
database migrated to head), keeps the ``dynamic_metrics`` COPY text the sink made, then
COPYs that same text again, in a transaction rolled back each time, into the table as
migrated and into variants of it: without its foreign key to
``normalized_transactions``, without its indexes too, and into plain tables whose
``metric_data`` is ``jsonb``, ``json`` or ``text``. Prints the time of each, best of
``--repeat``, per row: where a metric row's cost lies (the contract keeps the foreign
key and the JSONB; this says what they cost).
"""

from __future__ import annotations

import argparse
import io
import os
import time
import uuid
from typing import Any

import storage.postgres as sink_module
from benchmarks.sinks import batches
from devtools.services import ensure_postgres
from devtools.stack import REPO_ROOT, run_migrations
from storage.postgres import PostgresSink, create_db_engine

COLUMNS = "(transaction_id, metric_type, metric_data, config_version)"
TABLE = "CREATE {kind} TABLE t (transaction_id text, metric_type text, metric_data {type}, " \
        "config_version text)"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.metric_copy", description=__doc__)
    p.add_argument("--payments", type=int, default=40_000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    pg = ensure_postgres(os.environ.get("DATABASE_URL"), REPO_ROOT / ".run" / "bench-sinks"
                         / "pg")
    name = f"payment_monitor_metric_copy_{uuid.uuid4().hex[:6]}"
    url = pg.create_database(name)
    made: list[bytes] = []
    metric_rows = sink_module._metric_rows

    def keep(*a: Any, **kw: Any) -> bytes:
        rows = metric_rows(*a, **kw)
        made.append(rows)
        return rows

    try:
        run_migrations(url)
        db = create_db_engine(url)
        sink = PostgresSink(db)
        sink_module._metric_rows = keep  # type: ignore[assignment]
        try:
            for batch in batches(args.payments, 2_000, 1, True):
                sink.write([batch])
        finally:
            sink_module._metric_rows = metric_rows  # type: ignore[assignment]
        data = b"".join(made)
        rows = data.count(b"\n")
        raw = db.raw_connection()
        cur = raw.cursor()
        cur.execute("SELECT conname FROM pg_constraint WHERE contype = 'f' "
                    "AND conrelid = 'dynamic_metrics'::regclass")
        found = cur.fetchone()
        assert found is not None, "dynamic_metrics has a foreign key (alembic 0001)"
        fk = found[0]
        raw.rollback()
        drop_fk = f'ALTER TABLE dynamic_metrics DROP CONSTRAINT "{fk}"'
        variants = {
            "dynamic_metrics as migrated": ([], "dynamic_metrics"),
            "... without its foreign key": ([drop_fk], "dynamic_metrics"),
            "... without its indexes too": ([drop_fk, "DROP INDEX ix_dynamic_metrics_created_at",
                                             "DROP INDEX ix_dynamic_metrics_transaction_id_"
                                             "metric_type"], "dynamic_metrics"),
            "a plain table, jsonb": ([TABLE.format(kind="", type="jsonb")], "t"),
            "a plain table, json": ([TABLE.format(kind="", type="json")], "t"),
            "a plain table, text": ([TABLE.format(kind="", type="text")], "t"),
        }
        print(f"{rows:,} dynamic_metrics rows ({len(data) / rows:.0f} bytes each) from "
              f"{args.payments:,} payments, COPY again, best of {args.repeat}:")
        for label, (setup, table) in variants.items():
            best = float("inf")
            for _ in range(args.repeat):
                for statement in setup:
                    cur.execute(statement)
                started = time.perf_counter()
                cur.copy_expert(f"COPY {table} {COLUMNS} FROM STDIN", io.BytesIO(data))
                best = min(best, time.perf_counter() - started)
                raw.rollback()
            print(f"  {label:<30} {best * 1000:7.0f} ms  {best / rows * 1e6:5.1f} us/row",
                  flush=True)
        raw.close()
        db.dispose()
    finally:
        pg.drop_database(name)
        pg.stop()


if __name__ == "__main__":
    main()
