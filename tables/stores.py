"""The RocksDB sizes of every table store, and what they hold in memory."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable
from typing import Any

from faust import stores
from faust.stores import rocksdb as faust_rocksdb
from rocksdict import BlockBasedIndexType, BlockBasedOptions, Cache, Options, WriteBufferManager
from yarl import URL

SCHEME = "bounded-rocksdb"
SHARED_CACHE_BYTES = 16 << 20  # every table's blocks, index and filters
SHARED_MEMTABLE_BYTES = 16 << 20  # every table's memtables


def rocksdb_options() -> dict[str, int]:
    """Small write buffers for each table's RocksDB (the block cache and the memtable
    budget are shared: :class:`BoundedRocksDBOptions`), so a worker's memory does not
    grow with its tables. Faust's defaults are three 64 MiB write
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


@functools.cache
def _shared() -> tuple[Cache, WriteBufferManager]:
    return (Cache(SHARED_CACHE_BYTES),
            WriteBufferManager(SHARED_MEMTABLE_BYTES, False))


class BoundedRocksDBOptions(faust_rocksdb.RocksDBOptions):
    """Faust's rocksdict options, with one block cache and one memtable budget for every
    table store of the process, and index and filter blocks inside that cache.

    Faust gives each database its own cache, and keeps each open file's index and filter
    blocks outside any cache: they grow with the data (the seen table holds every id of
    the dedupe window) and, with 24 databases on a worker, so does the memory.
    """

    def as_options(self) -> Options:
        options: Options = super().as_options()
        cache, memtables = _shared()
        table = BlockBasedOptions()
        table.set_block_cache(cache)
        table.set_bloom_filter(10, False)
        table.set_index_type(BlockBasedIndexType.binary_search())
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        options.set_block_based_table_factory(table)
        options.set_write_buffer_manager(memtables)
        return options


class BoundedStore(faust_rocksdb.Store):
    """Faust's RocksDB store with :class:`BoundedRocksDBOptions` (``bounded-rocksdb://``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rocksdb_options = BoundedRocksDBOptions(**(self.options or {}), use_rocksdict=True)


def store_url(url: str) -> str:
    """The Faust store URL for the ``STORE_URL`` setting: ``rocksdb://`` opens
    :class:`BoundedStore`; anything else (``memory://``) is Faust's own."""
    if URL(url).scheme != "rocksdb":
        return url
    stores.STORES.aliases.setdefault(SCHEME, f"{__name__}:BoundedStore")
    return SCHEME + url[len("rocksdb"):]
