"""The raw-event lake's Delta Lake table (delta-rs): one place that opens, appends to,
compacts and trims it (ADR 0015).

- **Exactly once with no bookkeeping of our own.** Each append carries a Delta
  application transaction per source partition (app id ``<topic>-<partition>``, version
  the last offset appended). Before it writes, an append drops the rows at or below the
  table's version for that app id: a replay after a crash or a takeover writes only what
  the table does not hold. Two writers of one partition that read the same table version
  cannot both commit (delta-rs refuses the second, ``CommitFailedError``); the loser
  reloads the table and drops what the winner wrote.
- **Any engine reads it exactly**: the live files are the ones the transaction log
  lists (``_delta_log/``), so polars, DuckDB, Spark, Synapse or Fabric never see a file
  a compaction replaced or a write that never committed.
- Partitioned by ``date`` and ``hour`` (event time for accepted messages, arrival time
  for failed ones), as the Parquet layout before it was.
- Compaction is Delta's ``optimize`` (``LAKE_OPTIMIZE_TARGET_MB`` files); retention is a
  ``delete`` of the dates past ``LAKE_RETENTION_DAYS`` then a ``vacuum`` of the files no
  version needs any more: one retention clock, the app's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, Transaction, WriterProperties, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from models.errors import PaymentMonitorError

log = logging.getLogger(__name__)

PARTITION_BY = ["date", "hour"]
# the table's own settings, fixed when it is created
TABLE_CONFIGURATION = {
    "delta.checkpointInterval": "100",  # a reader replays at most 100 commits of JSON
    "delta.logRetentionDuration": "interval 7 days",
    "delta.deletedFileRetentionDuration": "interval 7 days",
}
# zstd, as the Parquet files before the table were (half of snappy's size on these rows)
WRITER = WriterProperties(compression="ZSTD")
COMMIT_ATTEMPTS = 20  # concurrent commits of other partitions' writers retried this often
# files a vacuum keeps after they left the table: a reader that opened an older
# version (a long query) still finds them
VACUUM_RETENTION_HOURS = 24


class LakeTableError(PaymentMonitorError, RuntimeError):
    """The Delta table could not be written (after the retries)."""


def delta_storage_options(url: str, fsspec_options: Mapping[str, Any]) -> dict[str, str]:
    """delta-rs (object_store) options for ``url`` from the fsspec options the settings
    give (:attr:`runtime.settings.Settings.lake_storage_options`): nothing for a path; for
    ``abfs://`` the account and key, from a connection string too (Azurite's included),
    or the account alone, to use the workload identity or managed identity of the
    environment (``AZURE_CLIENT_ID``, ``AZURE_TENANT_ID``, ``AZURE_FEDERATED_TOKEN_FILE``)."""
    if not url.startswith(("abfs://", "abfss://", "az://")):
        return {}
    options: dict[str, str] = {}
    conn = fsspec_options.get("connection_string")
    if conn:
        parts = dict(p.split("=", 1) for p in str(conn).split(";") if "=" in p)
        options["account_name"] = parts.get("AccountName", "")
        if "AccountKey" in parts:
            options["account_key"] = parts["AccountKey"]
        endpoint = parts.get("BlobEndpoint")
        if endpoint:
            options["endpoint"] = endpoint.rstrip("/")
            if endpoint.startswith("http://"):
                options["allow_http"] = "true"
        return options
    if fsspec_options.get("account_name"):
        options["account_name"] = str(fsspec_options["account_name"])
    if fsspec_options.get("account_key"):
        options["account_key"] = str(fsspec_options["account_key"])
    return options


def table_uri(url: str) -> str:
    """The URI delta-rs takes: a local path as is (``file://`` stripped)."""
    return url[len("file://"):] if url.startswith("file://") else url.rstrip("/")


class RawTable:
    """The Delta table at ``url``, opened lazily and kept (reloaded before each write)."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.uri = table_uri(url)
        self.options = delta_storage_options(url, storage_options or {})
        self._table: DeltaTable | None = None
        self.retried = 0  # commits refused for a concurrent one and tried again

    def open(self) -> DeltaTable | None:
        """The table at its newest version, or None when none was written yet. Kept
        between calls and brought up to date with the commits since (``update_incremental``
        reads only those), so a flush does not load the whole log again."""
        if self._table is not None:
            self._table.update_incremental()
            return self._table
        try:
            self._table = DeltaTable(self.uri, storage_options=self.options or None)
        except TableNotFoundError:
            self._table = None
        return self._table

    def append(self, rows: pa.Table, app_id: str, last_offset: int) -> int:
        """Append one source partition's ``rows`` in one commit carrying the application
        transaction ``(app_id, last_offset)``. Rows at or below the table's version of
        ``app_id`` are dropped first (a replay). Returns the rows written; retried when a
        concurrent commit won."""
        for attempt in range(COMMIT_ATTEMPTS):
            table = self.open()
            todo = rows
            if table is not None:
                done = table.transaction_version(app_id)
                if done is not None:
                    todo = rows.filter(pc.greater(rows["offset"], done))
            if todo.num_rows == 0:
                return 0
            try:
                write_deltalake(
                    table if table is not None else self.uri, todo, mode="append",
                    partition_by=PARTITION_BY, storage_options=self.options or None,
                    configuration=TABLE_CONFIGURATION if table is None else None,
                    writer_properties=WRITER, commit_properties=CommitProperties(
                        app_transactions=[Transaction(app_id, last_offset)]))
            except CommitFailedError:
                self.retried += 1
                self._table = None  # reload from the log
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
                continue
            except Exception as exc:
                if table is None and "already exists" in str(exc).lower():
                    self._table = None  # another writer created it first
                    continue
                raise
            return todo.num_rows
        raise LakeTableError(f"the lake's Delta table at {self.uri} refused {COMMIT_ATTEMPTS} "
                             "commits in a row (concurrent writers)")

    def dataset(self) -> ds.Dataset | None:
        table = self.open()
        return None if table is None else table.to_pyarrow_dataset()

    def optimize(self, target_bytes: int, *, older_than: datetime | None = None,
                 ) -> dict[str, int]:
        """Compact small files into files of about ``target_bytes``, in the hour
        partitions that ended by ``older_than`` (default: all); returns the files
        removed and added."""
        if self.open() is None:
            return {"removed": 0, "added": 0}
        if older_than is None:
            scopes: list[list[tuple[str, str, Any]] | None] = [None]
        else:
            last = (older_than.astimezone(UTC) - timedelta(hours=1)).replace(
                minute=0, second=0, microsecond=0)  # the newest hour that has ended
            day, hour = f"{last:%Y-%m-%d}", f"{last:%H}"
            scopes = [[("date", "<", day)], [("date", "=", day), ("hour", "<=", hour)]]
        done = {"removed": 0, "added": 0}
        for scope in scopes:
            def compact(table: DeltaTable, scope: Any = scope) -> dict[str, Any]:
                return table.optimize.compact(partition_filters=scope, target_size=target_bytes,
                                              writer_properties=WRITER)

            metrics = self._retried("optimize", compact)
            done["removed"] += int(metrics.get("numFilesRemoved", 0))
            done["added"] += int(metrics.get("numFilesAdded", 0))
        return done

    def purge(self, days: int, *, now: datetime | None = None,
              vacuum_hours: float = VACUUM_RETENTION_HOURS) -> tuple[int, int]:
        """Delete the rows of the dates older than ``days`` days, then vacuum the files no
        version newer than ``vacuum_hours`` needs; returns (rows deleted, files
        removed)."""
        if self.open() is None:
            return 0, 0
        cutoff = ((now or datetime.now(UTC)) - timedelta(days=days)).strftime("%Y-%m-%d")
        metrics = self._retried("retention delete", lambda table: table.delete(
            f"date < '{cutoff}'"))
        deleted = int(metrics.get("num_deleted_rows", 0) or 0)
        table = self._reload()
        removed = table.vacuum(retention_hours=int(vacuum_hours), dry_run=False,
                               enforce_retention_duration=False)
        return deleted, len(removed)

    def _retried(self, what: str, operation: Callable[[DeltaTable], dict[str, Any]],
                 ) -> dict[str, Any]:
        """``operation`` on the table at its newest version, again on a newer one while a
        concurrent commit wins the race."""
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                return operation(self._reload())
            except CommitFailedError:
                self.retried += 1
                time.sleep(min(0.05 * 2 ** attempt, 1.0))
        raise LakeTableError(f"{what} on {self.uri} lost {COMMIT_ATTEMPTS} races with other "
                             "commits in a row")

    def _reload(self) -> DeltaTable:
        self._table = None
        table = self.open()
        assert table is not None
        return table
