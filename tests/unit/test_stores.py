"""The table stores' RocksDB memory: one cache and one memtable budget for every table,
with index and filter blocks inside the cache instead of beside it."""

from __future__ import annotations

from faust import stores
from faust.stores.rocksdb import RocksDBOptions
from rocksdict import Rdict

from tables.stores import (
    BoundedRocksDBOptions,
    BoundedStore,
    rocksdb_memory,
    rocksdb_options,
    store_url,
)


def held_outside_the_cache(options: RocksDBOptions, path) -> int:
    db = Rdict(str(path), options.as_options())
    try:
        for i in range(200_000):
            db[f"id-{i:08d}".encode()] = b"x" * 16
        db.flush(True)
        return rocksdb_memory([db])["table_readers"]
    finally:
        db.close()


def test_index_and_filter_blocks_live_in_the_shared_cache(tmp_path):
    """Faust's options keep each file's index and filter beside the cache: that grows
    with the table (the seen ids of the whole dedupe window). What stays outside is
    each file's properties (measured: 130 KB against 22 KB for 200,000 ids)."""
    faust_own = held_outside_the_cache(
        RocksDBOptions(**rocksdb_options(), use_rocksdict=True), tmp_path / "faust")
    bounded = held_outside_the_cache(
        BoundedRocksDBOptions(**rocksdb_options(), use_rocksdict=True), tmp_path / "bounded")
    assert bounded * 4 < faust_own


def test_the_rocksdb_setting_opens_the_bounded_store():
    assert store_url("memory://") == "memory://"
    url = store_url("rocksdb://")
    assert url == "bounded-rocksdb://" and stores.by_url(url) is BoundedStore
