"""Chunk limits (identifiers per request, bytes per file) and progress lines."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_audience_provider.identifiers.chunking import (
    ChunkCounter,
    ProgressLogger,
    fixed_chunk_size,
    iter_chunk_lists,
    iter_chunks_from_file,
    render_file,
)
from airflow_audience_provider.identifiers.rules import get_rule

CRITEO_EMAIL = get_rule("criteo", "email")
CRITEO_CUSTOMER = get_rule("criteo", "customer_id")
YANDEX_EMAIL = get_rule("yandex_audience", "email")


def test_stock_limits_follow_the_vendor_docs() -> None:
    assert CRITEO_EMAIL.max_ids_per_chunk == 50_000  # Criteo: at most 50,000 identifiers per add/remove request
    assert fixed_chunk_size(CRITEO_EMAIL, 64) == 50_000
    # Yandex: 1 GB per file and at least 100 entries, header "email\n", 65 bytes per hashed row.
    per_file = fixed_chunk_size(YANDEX_EMAIL, 64)
    assert len(YANDEX_EMAIL.header) + per_file * 65 <= 1_000_000_000
    assert YANDEX_EMAIL.min_entries == 100


ids_text = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_é", min_size=1, max_size=40)


@given(
    st.lists(ids_text, max_size=200),
    st.integers(min_value=1, max_value=30),
    st.one_of(st.none(), st.integers(min_value=60, max_value=400)),
)
def test_chunks_respect_count_and_byte_limits(values: list[str], max_ids: int, max_bytes: int | None) -> None:
    rule = CRITEO_CUSTOMER.with_options(max_ids_per_chunk=max_ids, max_bytes_per_chunk=max_bytes, header="id\n")
    chunks = list(iter_chunk_lists(values, rule))
    assert [v for c in chunks for v in c] == values
    for c in chunks:
        assert 1 <= len(c) <= max_ids
        if max_bytes is not None:
            assert len(render_file(rule, c)) <= max_bytes
    counter = ChunkCounter(rule)
    for i in range(0, len(values), 7):  # fed in pieces, as the engine does per partition
        counter.feed(values[i : i + 7])
    assert counter.chunks == len(chunks)


@settings(deadline=None)  # file I/O on a shared, loaded machine: no per-example time limit
@given(n=st.integers(min_value=0, max_value=500), max_ids=st.integers(min_value=1, max_value=60))
def test_fixed_length_chunks_from_file(n: int, max_ids: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    rule = CRITEO_EMAIL.with_options(max_ids_per_chunk=max_ids)
    values = [f"{i:064x}" for i in range(n)]
    path = tmp_path_factory.mktemp("chunks") / "adds"
    path.write_text("".join(v + "\n" for v in values))
    chunks = list(iter_chunks_from_file(path, rule, "add", total=99))
    assert [v for c in chunks for v in c.identifiers] == values
    assert all(1 <= len(c) <= max_ids and c.total == 99 for c in chunks)
    for c in chunks:  # what a sender reads into a request body: the chunk's lines, read straight from the file
        view = memoryview(bytearray(c.nbytes))
        c.read_lines_into(view)
        assert view.tobytes() == c.lines_bytes()
    assert [c.index for c in chunks] == list(range(1, len(chunks) + 1))
    counter = ChunkCounter(rule)
    counter.feed(values)
    assert counter.chunks == len(chunks)


def test_file_backed_chunk_streams_the_vendor_file(tmp_path: Path) -> None:
    rule = YANDEX_EMAIL.with_options(max_bytes_per_chunk=len("email\n") + 4 * 65)
    values = [f"{i:064x}" for i in range(10)]
    path = tmp_path / "adds"
    path.write_text("".join(v + "\n" for v in values))
    chunks = list(iter_chunks_from_file(path, rule, "add"))
    assert [len(c) for c in chunks] == [4, 4, 2]
    assert all(c.values is None for c in chunks)  # nothing materialised
    out = io.BytesIO()
    written = chunks[1].write_to(out)
    assert out.getvalue() == render_file(rule, values[4:8]) and written == chunks[1].file_size
    assert chunks[1].file_size <= rule.max_bytes_per_chunk  # type: ignore[operator]


def test_variable_length_chunks_from_file(tmp_path: Path) -> None:
    rule = CRITEO_CUSTOMER.with_options(max_ids_per_chunk=3)
    path = tmp_path / "adds"
    path.write_text("a\nbb\nccc\ndddd\n")
    chunks = list(iter_chunks_from_file(path, rule, "remove", first_index=5))
    assert [(c.index, c.operation, c.identifiers) for c in chunks] == [
        (5, "remove", ["a", "bb", "ccc"]),
        (6, "remove", ["dddd"]),
    ]
    out = io.BytesIO()
    chunks[1].write_to(out)
    assert out.getvalue() == b"dddd\n"


def test_byte_limit_for_files(tmp_path: Path) -> None:
    rule = YANDEX_EMAIL.with_options(max_bytes_per_chunk=len("email\n") + 3 * 65)
    values = [f"{i:064x}" for i in range(10)]
    chunks = list(iter_chunk_lists(values, rule))
    assert [len(c) for c in chunks] == [3, 3, 3, 1]
    assert render_file(rule, chunks[0]) == ("email\n" + "".join(v + "\n" for v in chunks[0])).encode()
    assert all(len(render_file(rule, c)) <= rule.max_bytes_per_chunk for c in chunks)  # type: ignore[operator]


def test_file_with_a_short_value_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "adds"
    path.write_text("a" * 64 + "\n" + "b" * 63 + "\n")
    with pytest.raises(ValueError, match="not all 64 characters"):
        list(iter_chunks_from_file(path, CRITEO_EMAIL, "add"))


def test_progress_logs_every_n_chunks_not_every_row(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    progress = ProgressLogger("seg", total_chunks=50, total_ids=50_000, every_chunks=10, every_seconds=3600)
    for _ in range(50):
        progress.update(1000)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 5
    assert lines[0].startswith("seg: chunk 10 of 50, 10000 of 50000 identifiers")
    assert "ids/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].endswith("ETA 0s")
