"""The RocksDB sizes of every table store."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any


def rocksdb_options() -> dict[str, int]:
    """Small write buffers and block cache for each table's RocksDB, so a worker's
    memory does not grow with its tables. Faust's defaults are three 64 MiB write
    buffers and a 2 GiB block cache for each table and partition: 24 databases on a
    worker with 4 partitions, whose memtables alone grew to hundreds of MB under load
    (docs/performance.md, "Memory"). Lookups do not suffer: the window tables are read
    through a write-back cache (:mod:`tables.cache`) and the seen ids only when a
    partition is assigned. A fresh dict each time: Faust's store takes keys out of the
    one it is given."""
    return {"write_buffer_size": 1 << 20, "max_write_buffer_number": 2,
            "block_cache_size": 1 << 20, "block_cache_compressed_size": 0}


ROCKSDB_MEMORY = {"table_readers": "rocksdb.estimate-table-readers-mem",
                  "memtables": "rocksdb.cur-size-all-mem-tables",
                  "block_cache": "rocksdb.block-cache-usage"}


def rocksdb_memory(dbs: Iterable[Any]) -> dict[str, int]:
    """Native memory of open RocksDB databases (rocksdict ``Rdict``), in bytes, by kind:
    index and filter blocks held outside the block cache, memtables, block cache (a
    cache shared by several databases is counted once per database). A database that
    cannot say (closed meanwhile) counts nothing."""
    total = dict.fromkeys(ROCKSDB_MEMORY, 0)
    n = 0
    for db in dbs:
        n += 1
        for kind, prop in ROCKSDB_MEMORY.items():
            with contextlib.suppress(Exception):  # a diagnostic must answer anyway
                total[kind] += int(db.property_int_value(prop) or 0)
    return {**total, "databases": n}


def table_databases(tables: Iterable[Any]) -> list[Any]:
    """The open RocksDB databases behind Faust tables (Faust's store keeps them per
    partition in ``_dbs``; a memory store has none)."""
    return [db for table in tables for db in getattr(table.data, "_dbs", {}).values()]
