"""Compaction of the raw-event lake, and the migration of a lake written before it was a
Delta table.

**Compaction** is Delta's ``optimize``: the small files of each hour partition (a worker
appends one commit per partition every ``PARQUET_FLUSH_SECONDS``) become files of about
``LAKE_OPTIMIZE_TARGET_MB``, in one commit; readers see the small files or the big ones,
never both. The leader runs it every ``LAKE_OPTIMIZE_INTERVAL_S`` on the hours that
ended two hours before; ``faust -A app raw compact`` runs it by hand.

**Migration** (``faust -A app raw migrate``) converts, in place, the Parquet layout of
ADR 0003 (``date=/hour=/<topic>-<partition>-<first>-<last>.parquet``, with its
``_inflight/`` records) into the Delta table at the same root. Per hour folder, oldest
first, one commit appends the folder's live files (a file an interrupted compaction
superseded is left out; so is every file of a flush that is missing one of its files,
which a replay writes again) and carries two kinds of application transaction:
``migrate:<date>/<hour>`` (the folder is done: a second run skips its append) and, per
source partition, ``<topic>-<partition>`` at the highest offset the table now holds (a
worker replaying those offsets drops them). The folder's old files are deleted after
the commit, and ``_inflight/`` at the end: a run that stops anywhere is finished by the
next one.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, Transaction, write_deltalake
from fsspec import AbstractFileSystem

from storage.delta import PARTITION_BY, TABLE_CONFIGURATION, WRITER, RawTable
from storage.parquet import RAW_SCHEMA, TABLE_SCHEMA

NAME = re.compile(r"^(?P<topic>.+)-(?P<partition>\d+)-(?P<first>\d+)-(?P<last>\d+)\.parquet$")
FOLDER = re.compile(r"date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})$")


@dataclass(frozen=True, order=True)
class LakeFile:
    topic: str
    partition: int
    first: int
    last: int
    path: str

    @classmethod
    def parse(cls, path: str) -> LakeFile | None:
        match = NAME.match(path.rsplit("/", 1)[-1])
        if match is None:
            return None
        return cls(match["topic"], int(match["partition"]), int(match["first"]),
                   int(match["last"]), path)

    def inside(self, other: LakeFile) -> bool:
        return (self.path != other.path and (self.topic, self.partition)
                == (other.topic, other.partition)
                and other.first <= self.first and self.last <= other.last)


def superseded(files: Iterable[LakeFile]) -> set[str]:
    """Paths of files whose offset range lies inside another file's (same folder)."""
    by_tp: dict[tuple[str, int], list[LakeFile]] = defaultdict(list)
    for f in files:
        by_tp[(f.topic, f.partition)].append(f)
    out: set[str] = set()
    for group in by_tp.values():
        if len(group) < 2:
            continue
        out.update(f.path for f in group if any(f.inside(g) for g in group))
    return out


def live_files(paths: Iterable[str]) -> list[str]:
    """The files a reader should read: every ``.parquet`` not superseded by a merge."""
    files = [f for p in paths if (f := LakeFile.parse(p)) is not None]
    gone = superseded(files)
    return sorted(f.path for f in files if f.path not in gone)


def compact(table: RawTable, *, before: datetime, target_mb: int = 128,
            ) -> dict[str, int]:
    """Optimize the hour partitions that ended by ``before``: returns the files removed
    and added."""
    return table.optimize(target_mb * 1024 * 1024, older_than=before)


@dataclass
class MigrationReport:
    folders: int = 0  # hour folders converted now
    skipped: int = 0  # converted by an earlier run (old files deleted now)
    files: int = 0  # old files read
    rows: int = 0
    incomplete: int = 0  # files of flushes missing a file (a replay writes them again)
    superseded: int = 0  # inputs of an interrupted compaction


def legacy_folders(fs: AbstractFileSystem, root: str) -> list[tuple[str, str, str]]:
    """``(date, hour, path)`` of every hour folder holding files of the old layout."""
    out: list[tuple[str, str, str]] = []
    try:
        days = fs.ls(root, detail=False)
    except FileNotFoundError:
        return out
    for day in days:
        if not day.rstrip("/").rsplit("/", 1)[-1].startswith("date="):
            continue
        for hour in fs.ls(day, detail=False):
            match = FOLDER.search(hour.rstrip("/"))
            if match and any(NAME.match(n.rsplit("/", 1)[-1])
                             for n in fs.ls(hour, detail=False)):
                out.append((match["date"], match["hour"], hour.rstrip("/")))
    return sorted(out)


def incomplete_flushes(fs: AbstractFileSystem, root: str) -> set[str]:
    """Names of the files of every flush an ``_inflight`` record lists with a file
    missing: a crash between its files; the offsets are replayed whole."""
    out: set[str] = set()
    try:
        names = fs.ls(f"{root}/_inflight", detail=False)
    except FileNotFoundError:
        return out
    for name in names:
        if not name.endswith(".json"):
            continue
        with fs.open(name, "rb") as fh:
            flushes = json.loads(fh.read()).get("flushes", [])
        for flush in flushes:
            files = [str(f) for f in flush.get("files", [])]
            if not all(fs.exists(f) for f in files):
                out.update(f.rsplit("/", 1)[-1] for f in files)
    return out


def migrate(fs: AbstractFileSystem, root: str, table: RawTable,
            progress: Callable[[int, int], None] | None = None) -> MigrationReport:
    """Convert the old layout under ``root`` into the Delta table (see the module)."""
    report = MigrationReport()
    folders = legacy_folders(fs, root)
    broken = incomplete_flushes(fs, root)
    done: dict[str, int] = {}  # app id -> highest offset held, across folders
    for i, (day, hour, folder) in enumerate(folders):
        names = [n for n in fs.ls(folder, detail=False) if NAME.match(n.rsplit("/", 1)[-1])]
        current = table.open()
        marker = f"migrate:{day}/{hour}"
        if current is not None and current.transaction_version(marker) is not None:
            report.skipped += 1
        else:
            live = set(live_files(names))
            report.superseded += len(names) - len(live)
            keep = sorted(n for n in live if n.rsplit("/", 1)[-1] not in broken)
            report.incomplete += len(live) - len(keep)
            parts = [_with_hour(conformed(pq.read_table(n, filesystem=fs)), day, hour)
                     for n in keep]
            rows = pa.concat_tables(parts) if parts else TABLE_SCHEMA.empty_table()
            for topic, partition in {(t, p) for f in keep
                                     if (lf := LakeFile.parse(f)) is not None
                                     for t, p in [(lf.topic, lf.partition)]}:
                mask = pc.and_(pc.equal(rows["topic"], topic),
                               pc.equal(rows["partition"], partition))
                top = pc.max(rows.filter(mask)["offset"]).as_py()
                app_id = f"{topic}-{partition}"
                held = current.transaction_version(app_id) if current is not None else None
                done[app_id] = max(top, done.get(app_id, -1), -1 if held is None else held)
            txns = [Transaction(marker, 1)] + [Transaction(a, v) for a, v in sorted(done.items())]
            write_deltalake(current if current is not None else table.uri, rows, mode="append",
                            partition_by=PARTITION_BY, storage_options=table.options or None,
                            configuration=TABLE_CONFIGURATION if current is None else None,
                            writer_properties=WRITER,
                            commit_properties=CommitProperties(app_transactions=txns))
            report.folders += 1
            report.files += len(keep)
            report.rows += rows.num_rows
        for n in names:  # converted (now or before): the old files go
            fs.rm(n)
        if progress is not None:
            progress(i + 1, len(folders))
    if fs.exists(f"{root}/_inflight"):
        fs.rm(f"{root}/_inflight", recursive=True)
    return report


def _with_hour(table: pa.Table, day: str, hour: str) -> pa.Table:
    n = table.num_rows
    return table.append_column("date", pa.array([day] * n, pa.string())).append_column(
        "hour", pa.array([hour] * n, pa.string()))


def conformed(table: pa.Table) -> pa.Table:
    """``table`` with every column of the current schema, in its order: a file written
    before a column was added (``customer_id``, schema version 2) has it null."""
    columns = [table[f.name] if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in RAW_SCHEMA]
    return pa.Table.from_arrays(columns, schema=RAW_SCHEMA)
