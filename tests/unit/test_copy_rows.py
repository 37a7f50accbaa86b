"""The COPY source the PostgreSQL sink streams its rows from (storage.postgres.CopyRows)."""

from __future__ import annotations

import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from storage.postgres import CopyRows


def read_all(source: CopyRows, size: int) -> list[str]:
    chunks = []
    while chunk := source.read(size):
        chunks.append(chunk)
    return chunks


ROW = st.text(st.characters(blacklist_characters="\n"), min_size=1, max_size=40)


@given(rows=st.lists(ROW.map(lambda t: t + "\n"), max_size=60),
       size=st.integers(min_value=1, max_value=200))
def test_chunks_hold_whole_rows_in_order_and_nothing_is_lost(rows: list[str], size: int) -> None:
    chunks = read_all(CopyRows(rows), size)
    assert "".join(chunks) == "".join(rows)
    for chunk in chunks:
        assert chunk.endswith("\n")  # a row is never split across reads
        *before_last, _ = chunk[:-1].split("\n")
        # it stops at the row that reaches size
        assert sum(len(row) + 1 for row in before_last) < size


def test_read_without_a_size_returns_the_rest() -> None:
    source = CopyRows(["a\n", "b\n", "c\n"])
    assert source.read(1) == "a\n"
    assert source.read() == "b\nc\n"
    assert source.read(10) == ""


def test_reading_holds_no_copy_of_all_rows() -> None:
    """io.StringIO of the joined rows held four bytes per character; the source holds
    a chunk at a time."""
    rows = [f"{i:020d}\tx\n" for i in range(100_000)]  # 2.3 MB of text
    tracemalloc.start()
    try:
        source = CopyRows(rows)
        while source.read(64 * 1024):
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000
