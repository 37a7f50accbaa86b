"""The RocksDB sizes of every table store."""

from __future__ import annotations


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
