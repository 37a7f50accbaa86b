"""Compaction of the raw-event lake: many small files of an hour become one per partition.

A partition's flushes each leave one file per hour folder they touch
(``<topic>-<partition>-<first>-<last>.parquet``, :mod:`storage.parquet`), so a busy hour
holds many small files. Compaction merges the files of one topic-partition in one hour
folder into ``<topic>-<partition>-<min first>-<max last>.parquet``, rows in offset order,
then deletes the inputs. The name follows from the inputs, so running it again, or
after a crash, writes the same name.

Exactly once, also across a crash between writing the merged file and deleting its
inputs: an input's offset range lies inside the merged file's, and readers
(:func:`live_files`, used by :class:`storage.lake.RawEventLake`) skip a file whose range
lies inside another file's of the same partition in the same folder; the next run
deletes such files first.

Only committed data is compacted: a file is left alone unless its last offset is below
every flush the writer's in-flight record (``_inflight/<topic>-<partition>.json``) still
lists, because a replay may rewrite exactly those offsets under other names. And only
hour folders older than ``before`` (default: two hours ago) are visited.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from storage.parquet import RAW_SCHEMA, write_parquet_atomic

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


@dataclass
class CompactionReport:
    folders: int = 0
    merged_files: int = 0  # inputs merged
    written: int = 0  # merged files written
    removed_leftovers: int = 0  # inputs of an interrupted run, deleted now
    rows: int = 0
    skipped_uncommitted: int = 0
    errors: list[str] = field(default_factory=list)


def safe_offsets(fs: AbstractFileSystem, root: str) -> dict[tuple[str, int], int]:
    """Per topic-partition, the first offset a replay might still rewrite."""
    out: dict[tuple[str, int], int] = {}
    folder = f"{root}/_inflight"
    try:
        names = fs.ls(folder, detail=False)
    except FileNotFoundError:
        return out
    for name in names:
        base = name.rsplit("/", 1)[-1]
        match = re.match(r"^(?P<topic>.+)-(?P<partition>\d+)\.json$", base)
        if match is None:
            continue
        with fs.open(name, "rb") as fh:
            flushes = json.loads(fh.read()).get("flushes", [])
        if flushes:
            out[(match["topic"], int(match["partition"]))] = min(
                int(f["first_offset"]) for f in flushes)
    return out


def hour_folders(fs: AbstractFileSystem, root: str) -> list[tuple[datetime, str]]:
    out: list[tuple[datetime, str]] = []
    try:
        days = fs.ls(root, detail=False)
    except FileNotFoundError:
        return out
    for day in days:
        if not day.rstrip("/").rsplit("/", 1)[-1].startswith("date="):
            continue
        for hour in fs.ls(day, detail=False):
            match = FOLDER.search(hour.rstrip("/"))
            if match:
                start = datetime.strptime(f"{match['date']} {match['hour']}",
                                          "%Y-%m-%d %H").replace(tzinfo=UTC)
                out.append((start, hour.rstrip("/")))
    return sorted(out)


def compact(fs: AbstractFileSystem, root: str, *, before: datetime, since: datetime | None = None,
            progress: Callable[[str], None] | None = None) -> CompactionReport:
    """Compact every hour folder that ends by ``before`` (and starts at ``since`` or later)."""
    report = CompactionReport()
    safe = safe_offsets(fs, root)
    for start, folder in hour_folders(fs, root):
        if start.timestamp() + 3600 > before.timestamp():
            continue
        if since is not None and start < since:
            continue
        report.folders += 1
        _compact_folder(fs, folder, safe, report)
        if progress is not None:
            progress(f"{folder}: {report.written} merged files so far")
    return report


def _compact_folder(fs: AbstractFileSystem, folder: str, safe: dict[tuple[str, int], int],
                    report: CompactionReport) -> None:
    names = [n for n in fs.ls(folder, detail=False)
             if not n.rsplit("/", 1)[-1].startswith((".", "_"))]
    files = [f for n in names if (f := LakeFile.parse(n)) is not None]
    leftovers = superseded(files)
    for path in sorted(leftovers):  # inputs of a merge that was written: finish it
        fs.rm(path)
        report.removed_leftovers += 1
    by_tp: dict[tuple[str, int], list[LakeFile]] = defaultdict(list)
    for f in files:
        if f.path not in leftovers:
            by_tp[(f.topic, f.partition)].append(f)
    for (topic, partition), group in sorted(by_tp.items()):
        limit = safe.get((topic, partition))
        ready = sorted(f for f in group if limit is None or f.last < limit)
        report.skipped_uncommitted += len(group) - len(ready)
        if len(ready) < 2:
            continue
        first, last = ready[0].first, max(f.last for f in ready)
        if any(f.first <= last and f.last >= first for f in group if f not in ready):
            continue  # an uncommitted file overlaps the range: leave it all for later
        table = pa.concat_tables([conformed(pq.read_table(f.path, filesystem=fs))
                                  for f in ready])
        table = table.sort_by([("offset", "ascending")])
        target = f"{folder}/{topic}-{partition}-{first}-{last}.parquet"
        write_parquet_atomic(fs, table, target)
        for f in ready:
            if f.path != target:
                fs.rm(f.path)
        report.merged_files += len(ready)
        report.written += 1
        report.rows += table.num_rows


def conformed(table: pa.Table) -> pa.Table:
    """``table`` with every column of the current schema, in its order: a file written
    before a column was added (``customer_id``, schema version 2) has it null."""
    columns = [table[f.name] if f.name in table.column_names else pa.nulls(table.num_rows, f.type)
               for f in RAW_SCHEMA]
    return pa.Table.from_arrays(columns, schema=RAW_SCHEMA)
