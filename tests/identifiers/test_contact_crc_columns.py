"""The CRC-32 partition byte of clear-text ids taken in polars, against ``zlib.crc32`` (the exact path)."""

from __future__ import annotations

import zlib
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_audience_provider.identifiers import kernel, sorting
from airflow_audience_provider.identifiers.hashing import partition_of

pytestmark = pytest.mark.skipif(kernel.load_email_kernel() is None, reason="needs the fast extra (polars)")

# ASCII with controls and NUL (a NUL is also the padding byte), non-ASCII of 2 to 4 UTF-8 bytes
TEXT = st.text(
    st.one_of(
        st.characters(max_codepoint=0x7F),
        st.sampled_from("0123456789-_"),
        st.characters(min_codepoint=0x80, exclude_categories=("Cs",)),
    ),
    max_size=80,
)
# lengths around the polars path's limit, and the lengths of real ids
AROUND_LIMIT = st.integers(0, 3).flatmap(
    lambda k: st.text(
        st.characters(max_codepoint=0x7F),
        min_size=sorting.CRC_COLUMN_BYTES - 2 + k,
        max_size=sorting.CRC_COLUMN_BYTES - 2 + k,
    )
)
DIGITS = st.integers(0, 10**20).map(str)


def _polars() -> object:
    return kernel.load_email_kernel().polars  # type: ignore[union-attr]


def _low_bytes(values: list[str], min_rows: int = 0) -> list[int]:
    """:func:`sorting.crc32_low_bytes`, by default in polars however few the values."""
    pl = _polars()
    with mock.patch.object(sorting, "CRC_COLUMN_MIN_ROWS", min_rows):
        return sorting.crc32_low_bytes(pl, pl.Series(values, dtype=pl.String)).to_list()  # type: ignore[attr-defined]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(TEXT, AROUND_LIMIT, DIGITS, st.just("")), max_size=60), st.sampled_from([8 << 20, 1, 700]))
def test_low_byte_is_zlibs(values: list[str], gather_bytes: int) -> None:
    """Mixed lengths (empty, up to past the limit), NULs, controls, non-ASCII, the lookups gathered in
    one piece or several: the same byte as zlib."""
    with mock.patch.object(sorting, "_CRC_GATHER_BYTES", gather_bytes):
        assert _low_bytes(values) == [zlib.crc32(v.encode("utf-8")) & 0xFF for v in values]


@settings(max_examples=100, deadline=None)
@given(st.lists(TEXT.filter(lambda v: not v.isascii()), min_size=1, max_size=20), st.lists(DIGITS, max_size=20))
def test_low_byte_is_zlibs_when_most_values_take_zlib(others: list[str], digits: list[str]) -> None:
    """A batch mostly of non-ASCII values takes zlib whole; one with a few takes it for those only."""
    for values in (others + digits, digits + others[:1]):
        assert _low_bytes(values) == [zlib.crc32(v.encode("utf-8")) & 0xFF for v in values]


def test_low_byte_of_long_and_edge_values() -> None:
    """Every length up to past the limit, every byte value at the first and last position."""
    values = ["x" * n for n in range(sorting.CRC_COLUMN_BYTES + 3)]
    values += [chr(b) + "y" * 30 + chr(c) for b in range(128) for c in (0, b, 127)]
    values += ["€" * 70, "a" * 600]
    assert _low_bytes(values) == [zlib.crc32(v.encode("utf-8")) & 0xFF for v in values]


def test_low_byte_of_few_values_is_zlibs_too() -> None:
    """Below the polars path's row count the values take zlib."""
    values = ["CUST-1", "é", ""] * 10
    want = [zlib.crc32(v.encode("utf-8")) & 0xFF for v in values]
    assert _low_bytes(values, min_rows=len(values) + 1) == _low_bytes(values) == want


@settings(max_examples=100, deadline=None)
@given(st.lists(TEXT, max_size=40), st.sampled_from([0, 4096]))
def test_clear_frame_partitions_are_partition_of(values: list[str], min_rows: int) -> None:
    """``clear_frame``'s ``p`` is the snapshot's partition (``partition_of``) shifted into place."""
    with mock.patch.object(sorting, "CRC_COLUMN_MIN_ROWS", min_rows):
        frame = sorting.clear_frame(_polars(), values)
    got = [int(p) >> sorting.PARTITION_SHIFT for p in frame.get_column("p").to_list()]
    assert got == [int(partition_of(v, False), 16) for v in values]
