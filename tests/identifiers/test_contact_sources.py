"""Each source: what it yields, and the errors that name file, line and column."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_audience_provider.identifiers.errors import SourceError, WrongIdentifierTypeError
from airflow_audience_provider.identifiers.sources import (
    CsvSource,
    IterableSource,
    JsonLinesSource,
    ParquetSource,
    TextSource,
    open_source,
    read_all,
)


def lines_of(source: object) -> list[tuple[str, int]]:
    return [(v, b.line_of(i)) for b in source.iter_batches(batch_size=2) for i, v in enumerate(b.values)]  # type: ignore[attr-defined]


def test_text_source_skips_blank_lines_keeps_line_numbers(tmp_path: Path) -> None:
    p = tmp_path / "ids.txt"
    p.write_bytes(b"\xef\xbb\xbfa@b.com\r\n\r\nc@d.com\n\n e@f.com \n")
    assert lines_of(TextSource(p)) == [("a@b.com", 1), ("c@d.com", 3), (" e@f.com ", 5)]


def test_text_source_reads_gzip_and_last_line_without_newline(tmp_path: Path) -> None:
    p = tmp_path / "ids.txt.gz"
    p.write_bytes(gzip.compress(b"a@b.com\nc@d.com"))
    assert read_all(TextSource(p)) == ["a@b.com", "c@d.com"]


def test_text_source_batches_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_audience_provider.identifiers import sources

    monkeypatch.setattr(sources, "_BLOCK_BYTES", 7)  # lines straddle block boundaries
    p = tmp_path / "ids.txt"
    values = [f"user{i}@example.com" for i in range(50)]
    p.write_text("\n".join(values) + "\n")
    got = lines_of(TextSource(p))
    assert got == [(v, i + 1) for i, v in enumerate(values)]


def test_undecodable_bytes_name_file_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "bad.txt"
    p.write_bytes(b"a@b.com\nc@d.com\nxy\xffz@e.com\n")
    with pytest.raises(SourceError) as exc:
        read_all(TextSource(p))
    assert (exc.value.line, exc.value.column) == (3, 3)
    assert "bad.txt, line 3, column 3" in str(exc.value)


def test_windows_1251_is_decoded(tmp_path: Path) -> None:
    p = tmp_path / "cp.csv"
    header = "\u0438\u043c\u044f"  # a Cyrillic column name
    p.write_bytes(f"{header},email\nIvan,ivan@example.ru\n".encode("cp1251"))
    assert read_all(CsvSource(p, "email", encoding="cp1251")) == ["ivan@example.ru"]


def test_csv_column_by_name_quotes_and_short_rows(tmp_path: Path) -> None:
    p = tmp_path / "crm.csv"
    p.write_text('id,"E-Mail",name\n1,a@b.com,"Doe, John"\n2\n\n3,"c@d.com","multi\nline"\n4,e@f.com,x\n')
    src = CsvSource(p, "e-mail")
    assert lines_of(src) == [("a@b.com", 2), ("", 3), ("c@d.com", 6), ("e@f.com", 7)]


def test_csv_missing_column_is_an_error_on_line_1(tmp_path: Path) -> None:
    p = tmp_path / "crm.csv"
    p.write_text("id,phone\n1,+79995551111\n")
    with pytest.raises(SourceError) as exc:
        read_all(CsvSource(p, "email"))
    assert exc.value.line == 1
    assert exc.value.column == "email"
    assert "'phone'" in str(exc.value)  # header names are listed, they are not personal data


def test_csv_by_index_without_header_and_tsv(tmp_path: Path) -> None:
    p = tmp_path / "x.tsv"
    p.write_text("1\ta@b.com\n2\tc@d.com\n")
    assert read_all(CsvSource(p, 1, delimiter="\t", has_header=False)) == ["a@b.com", "c@d.com"]
    assert read_all(open_source(str(p), column=1, has_header=False)) == ["a@b.com", "c@d.com"]


def test_jsonl_source(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    rows = [{"email": "a@b.com"}, {"email": None}, {"other": 1}, {"email": 79995551111}, {"email": [1]}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    values = read_all(JsonLinesSource(p, "email"))
    assert values[:4] == ["a@b.com", "", "", "79995551111"]
    assert values[4].startswith("\x00")  # a list is no identifier: rejected without echoing it


def test_jsonl_malformed_line_and_missing_field(tmp_path: Path) -> None:
    p = tmp_path / "x.jsonl"
    p.write_text('{"email": "a@b.com"}\n{"email": "c@d.com"\n')
    with pytest.raises(SourceError) as exc:
        read_all(JsonLinesSource(p, "email"))
    assert exc.value.line == 2
    assert exc.value.column == 20  # just after the last character: the missing brace
    p.write_text('{"mail": "a@b.com"}\n')
    with pytest.raises(SourceError, match="field 'email' not in the first object"):
        read_all(JsonLinesSource(p, "email"))


def test_parquet_source(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "x.parquet"
    pq.write_table(pa.table({"email": ["a@b.com", None, "c@d.com"], "n": [1, 2, 3]}), p)
    assert lines_of(ParquetSource(p, "email")) == [("a@b.com", 1), ("", 2), ("c@d.com", 3)]
    assert read_all(open_source({"path": str(p), "column": "email"})) == ["a@b.com", "", "c@d.com"]
    with pytest.raises(SourceError, match="column 'mail' not found"):
        read_all(ParquetSource(p, "mail"))
    pq.write_table(pa.table({"email": [1.5, 2.5]}), p)
    with pytest.raises(WrongIdentifierTypeError, match="expected text"):
        read_all(ParquetSource(p, "email"))


def test_iterable_source_positions_and_types() -> None:
    src = IterableSource(iter(["a@b.com", b"c@d.com", None, 42]))
    assert lines_of(src) == [("a@b.com", 1), ("c@d.com", 2), ("", 3), ("42", 4)]
    with pytest.raises(SourceError) as exc:
        read_all(IterableSource([b"ok", b"\xff"]))
    assert exc.value.line == 2


@given(
    st.lists(st.one_of(st.text(max_size=5), st.binary(max_size=3), st.none(), st.integers(), st.booleans())),
    st.integers(1, 7),
)
def test_iterable_source_batches_a_list_as_any_iterable(values: list[object], batch_size: int) -> None:
    """A list is cut by slicing, any other iterable through an iterator: the same batches either way."""

    def batches(source: IterableSource) -> list[tuple[list[str], int]] | str:
        try:
            return [(b.values, b.first_line) for b in source.iter_batches(batch_size)]
        except SourceError as exc:
            return f"{exc.line}"

    assert batches(IterableSource(values)) == batches(IterableSource(iter(values)))


def test_open_source_formats_and_xcom_reference(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("email\na@b.com\n")
    assert read_all(open_source(p, column="email")) == ["a@b.com"]
    # An upstream task pushes a reference to the rows, never the rows.
    assert read_all(open_source({"path": str(p), "column": "email"})) == ["a@b.com"]
    assert read_all(open_source(f"file://{p}", column="email")) == ["a@b.com"]
    with pytest.raises(ValueError, match="cannot tell the format"):
        open_source(tmp_path / "x.bin")
    with pytest.raises(ValueError, match="needs column"):
        open_source(p)
    with pytest.raises(ValueError, match="'path'"):
        open_source({"column": "email"})


def test_object_storage_path_source(tmp_path: Path) -> None:
    from airflow.sdk import ObjectStoragePath

    p = tmp_path / "x.txt"
    p.write_text("a@b.com\n")
    assert read_all(open_source(ObjectStoragePath(f"file://{p}"))) == ["a@b.com"]


def test_utf16_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    p = tmp_path / "x.txt"
    p.write_text("a@b.com\n", encoding="utf-16")
    with pytest.raises(ValueError, match="re-encode the file as UTF-8"):
        read_all(TextSource(p, encoding="utf-16"))
