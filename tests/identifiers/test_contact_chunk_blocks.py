"""Cutting variable-length values (customer ids, ClientIDs) into chunks block by block gives the
chunks the value-by-value rule gives."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from airflow_audience_provider.identifiers import chunking
from airflow_audience_provider.identifiers.chunking import ChunkCounter, _limits, iter_chunk_lists
from airflow_audience_provider.identifiers.rules import VendorRule, get_rule

BASE = get_rule("yandex_audience", "client_id")


def reference_lists(values: list[str], rule: VendorRule) -> list[list[str]]:
    """The value-by-value rule: a chunk ends before the value that would break a limit."""
    max_ids, budget, overhead = _limits(rule)
    chunks: list[list[str]] = []
    current: list[str] = []
    used = 0
    for v in values:
        cost = len(v.encode("utf-8", "surrogatepass")) + overhead
        if budget is not None and cost > budget:
            raise ValueError("too long")
        if current and (len(current) >= max_ids or (budget is not None and used + cost > budget)):
            chunks.append(current)
            current, used = [], 0
        current.append(v)
        used += cost
    if current:
        chunks.append(current)
    return chunks


def rule_with(max_ids: int | None, max_bytes: int | None) -> VendorRule:
    return BASE.with_options(max_ids_per_chunk=max_ids, max_bytes_per_chunk=max_bytes)


value = st.text(alphabet="ab\u00e9\u4e2d\U0001f600", min_size=1, max_size=6)


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(value, max_size=60),
    max_ids=st.one_of(st.none(), st.integers(1, 12)),
    max_bytes=st.one_of(st.none(), st.integers(25, 60)),
    block=st.integers(1, 9),
    feeds=st.integers(1, 4),
)
def test_block_cutting_matches_the_value_by_value_rule(values, max_ids, max_bytes, block, feeds) -> None:
    rule = rule_with(max_ids, max_bytes)
    saved = chunking.CHUNK_BLOCK
    chunking.CHUNK_BLOCK = block
    try:
        want = reference_lists(values, rule)
        assert list(iter_chunk_lists(iter(values), rule)) == want
        counter = ChunkCounter(rule)
        step = max(1, len(values) // feeds)
        for i in range(0, len(values), step):
            counter.feed(values[i : i + step])
        assert counter.chunks == len(want)
        assert counter.values == len(values)
    finally:
        chunking.CHUNK_BLOCK = saved


def test_a_value_longer_than_the_byte_limit_is_refused_after_the_chunks_before_it() -> None:
    rule = rule_with(None, 12)
    it = iter_chunk_lists(iter(["aaaa", "bbbb", "cccc", "x" * 20]), rule)
    assert next(it) == ["aaaa", "bbbb"]
    with pytest.raises(ValueError, match="longer than max_bytes_per_chunk"):
        next(it)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(value, max_size=40), max_ids=st.integers(1, 12), read=st.integers(1, 15))
def test_chunks_read_back_from_a_work_file_match_the_value_by_value_rule(values, max_ids, read) -> None:
    """Work files are read in blocks of ``read`` characters here, so blocks cut lines anywhere."""
    import tempfile
    from pathlib import Path

    rule = rule_with(max_ids, 40)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "adds"
        path.write_text("".join(f"{v}\n" for v in values), encoding="utf-8")
        with open(path, encoding="utf-8", newline="\n") as fh:
            assert [v for block in chunking._line_blocks(fh, read) for v in block] == values
        chunks = list(chunking.iter_chunks_from_file(path, rule, "add", first_index=3))
    assert [c.values for c in chunks] == reference_lists(values, rule)
    assert [c.index for c in chunks] == list(range(3, 3 + len(chunks)))


def test_a_work_file_whose_last_line_has_no_newline_is_refused(tmp_path) -> None:
    path = tmp_path / "adds"
    path.write_text("a\nb", encoding="utf-8")
    with pytest.raises(ValueError, match="no newline"):
        list(chunking.iter_chunks_from_file(path, rule_with(10, None), "add"))


def _cumulative(values: list[str]) -> list[int]:
    sizes = [0]
    for v in values:
        sizes.append(sizes[-1] + len(v.encode("utf-8")))
    return sizes


@settings(max_examples=400, deadline=None)
@given(
    values=st.lists(value, max_size=60),
    max_ids=st.one_of(st.none(), st.integers(1, 12)),
    max_bytes=st.one_of(st.none(), st.integers(25, 60)),
    feeds=st.integers(1, 4),
)
def test_counting_by_sizes_gives_the_chunks_and_their_place_in_the_work_file(
    tmp_path_factory: pytest.TempPathFactory,
    values: list[str],
    max_ids: int | None,
    max_bytes: int | None,
    feeds: int,
) -> None:
    """``feed_sizes`` (the columnar plan's counter) counts what ``feed`` counts, and the file
    positions it records give, as file-backed chunks, the lists the value-by-value rule gives."""
    rule = rule_with(max_ids, max_bytes)
    want = reference_lists(values, rule)
    counter = ChunkCounter(rule)
    step = max(1, len(values) // feeds)
    for i in range(0, len(values), step):
        counter.feed_sizes(_cumulative(values[i : i + step]))
    assert counter.chunks == len(want)
    assert counter.values == len(values)
    path = tmp_path_factory.mktemp("work") / "adds"
    path.write_bytes("".join(f"{v}\n" for v in values).encode("utf-8"))
    bounds = counter.file_chunks
    assert bounds is not None
    chunks = list(chunking.iter_chunks_from_file(path, rule, "add", first_index=2, total=9, bounds=bounds))
    assert [c.identifiers for c in chunks] == want
    assert [c.path for c in chunks] == [str(path)] * len(want)  # pointing into the file, not read back
    assert [(c.index, c.total, len(c)) for c in chunks] == [(2 + i, 9, len(w)) for i, w in enumerate(want)]
    assert [c.file_size for c in chunks] == [len(chunking.render_file(rule, w)) for w in want]


def test_a_value_longer_than_the_byte_limit_is_still_refused_when_counted_by_size(tmp_path) -> None:
    """No file positions then: the chunks are read back and cut, which refuses the value as before."""
    rule = rule_with(None, 12)
    values = ["aaaa", "bbbb", "cccc", "x" * 20]
    counter = ChunkCounter(rule)
    counter.feed_sizes(_cumulative(values))
    assert counter.file_chunks is None
    path = tmp_path / "adds"
    path.write_text("".join(f"{v}\n" for v in values), encoding="utf-8")
    it = chunking.iter_chunks_from_file(path, rule, "add", bounds=counter.file_chunks)
    assert next(it).identifiers == ["aaaa", "bbbb"]
    with pytest.raises(ValueError, match="longer than max_bytes_per_chunk"):
        next(it)


def test_values_counted_one_by_one_give_no_file_positions() -> None:
    """The Python plan feeds lists: its chunks are read back from the file as before."""
    counter = ChunkCounter(BASE)
    counter.feed_sizes(_cumulative(["a", "b"]))
    assert counter.file_chunks == [(2, 4)]
    counter.feed(["c"])
    assert counter.file_chunks is None
