"""Streaming identifier sources: CSV, newline-delimited text, JSON lines, Parquet, Python iterables.

Every source yields :class:`RawBatch` objects of at most ``batch_size`` raw values (one value per
input row); nothing reads a whole file into memory. Files can be local paths or Airflow
``ObjectStoragePath`` locations (``s3://``, ``gs://``... when the matching provider is installed);
``airflow.sdk`` is imported only when such a URL is opened.

Bad input raises :class:`~airflow_audience_provider.identifiers.errors.SourceError` naming the file,
line and column: undecodable bytes, a missing column, a malformed JSON line. These are raised while
reading, which the engine does completely before it sends anything.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import itertools
import json
import operator
import os
import pathlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Protocol, runtime_checkable

from airflow_audience_provider.identifiers.errors import SourceError, WrongIdentifierTypeError

DEFAULT_BATCH_SIZE = 8192
_BLOCK_BYTES = 1 << 20


@dataclass
class RawBatch:
    """A batch of raw values.

    :param values: raw values, one per input row.
    :param origin: file or source description used in messages.
    :param first_line: line number of ``values[0]`` (1-based) when ``lines`` is None.
    :param lines: line number of each value when rows are not on consecutive lines.
    :param column: column name or index the values came from, for messages.
    """

    values: list[str]
    origin: str
    first_line: int = 1
    lines: list[int] | None = None
    column: str | int | None = None

    def line_of(self, index: int) -> int:
        """Line number of ``values[index]``."""
        return self.lines[index] if self.lines is not None else self.first_line + index

    def location(self, index: int) -> str:
        """``"origin:line"`` of a value, for redacted samples."""
        return f"{self.origin}:{self.line_of(index)}"


@runtime_checkable
class IdentifierSource(Protocol):
    """Anything that can stream raw identifier values in batches."""

    origin: str

    def iter_batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[RawBatch]:
        """Yield batches of raw values in input order."""
        ...


PathLike = str | os.PathLike[str] | Any  # Any: an ObjectStoragePath, typed loosely to stay import-free


def _is_url(path: object) -> bool:
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def describe_path(path: PathLike) -> str:
    """Text naming a path in messages, without the user-info part a URL might carry."""
    text = str(path)
    if "://" in text:
        scheme, rest = text.split("://", 1)
        netloc, sep, tail = rest.partition("/")
        if "@" in netloc:
            return f"{scheme}://{netloc.rsplit('@', 1)[1]}{sep}{tail}"
    return text


def open_binary(path: PathLike) -> IO[bytes]:
    """Open a local path, a ``file://`` URL or an ObjectStoragePath for binary reading.

    ``.gz`` files are decompressed on the fly.
    """
    raw: IO[bytes]
    name = str(path)
    if isinstance(path, str) and path.startswith("file://"):
        path = path[len("file://") :]
        name = path
    if _is_url(path):
        from airflow.sdk import ObjectStoragePath  # lazy: pulls in the Task SDK and fsspec

        raw = ObjectStoragePath(path).open("rb")
    elif hasattr(path, "fs") and hasattr(path, "open"):
        # An ObjectStoragePath (fsspec-backed): on Airflow 3.1 it is also a pathlib.Path whose
        # fspath is a URL the built-in open() cannot read, so its own open() must win.
        raw = path.open("rb")
    elif isinstance(path, (str, pathlib.PurePath)):
        raw = open(path, "rb")  # noqa: SIM115 - the caller closes it
    elif hasattr(path, "open"):
        raw = path.open("rb")
    elif isinstance(path, os.PathLike):
        raw = open(path, "rb")  # noqa: SIM115 - the caller closes it
    else:
        raise TypeError(f"cannot open {type(path).__name__} as a file")
    if name.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw


def _decode_error(exc: UnicodeDecodeError, block: bytes, first_line: int, origin: str, encoding: str) -> SourceError:
    line = first_line + block.count(b"\n", 0, exc.start)
    line_start = block.rfind(b"\n", 0, exc.start) + 1
    return SourceError(
        f"bytes that are not valid {encoding} (byte 0x{block[exc.start]:02x})",
        origin=origin,
        line=line,
        column=exc.start - line_start + 1,
    )


def iter_text_blocks(fh: IO[bytes], encoding: str, origin: str) -> Iterator[tuple[str, int]]:
    """Decode a byte stream in blocks cut at newlines; yield ``(text, first line number)``.

    Decoding is strict: the first undecodable byte raises a SourceError with its line and byte
    column. Works for UTF-8 and single-byte encodings (Windows-1251, Latin-1...), where a newline
    byte is always a newline; UTF-16/32 are refused.
    """
    name = codecs.lookup(encoding).name
    if name.startswith(("utf-16", "utf-32")):
        raise ValueError(f"{origin}: encoding {encoding!r} is not supported; re-encode the file as UTF-8")
    line = 1
    pending = b""
    first = True
    while True:
        data = fh.read(_BLOCK_BYTES)
        if not data:
            break
        data = pending + data
        cut = data.rfind(b"\n")
        if cut < 0:
            pending = data
            continue
        block, pending = data[: cut + 1], data[cut + 1 :]
        if first and block.startswith(codecs.BOM_UTF8) and name.startswith("utf-8"):
            block = block[3:]
        first = False
        try:
            text = block.decode(encoding)
        except UnicodeDecodeError as exc:
            raise _decode_error(exc, block, line, origin, encoding) from None
        yield text, line
        line += block.count(b"\n")
    if pending:
        if first and pending.startswith(codecs.BOM_UTF8) and name.startswith("utf-8"):
            pending = pending[3:]
        try:
            text = pending.decode(encoding)
        except UnicodeDecodeError as exc:
            raise _decode_error(exc, pending, line, origin, encoding) from None
        yield text, line


class _FileSource:
    """A source read from one file: its path and the name errors give it."""

    def __init__(self, path: PathLike) -> None:
        self.path = path
        self.origin = describe_path(path)


class TextSource(_FileSource):
    """Newline-delimited text: one identifier per line. Empty lines are skipped (not rows).

    :param path: local path, URL or ObjectStoragePath.
    :param encoding: file encoding (UTF-8 or a single-byte encoding such as ``cp1251``).
    :param skip_header: ignore the first line (e.g. a lone ``email`` header).
    """

    def __init__(self, path: PathLike, *, encoding: str = "utf-8", skip_header: bool = False) -> None:
        super().__init__(path)
        self.encoding = encoding
        self.skip_header = skip_header

    def iter_batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[RawBatch]:
        """Yield batches of lines."""
        with open_binary(self.path) as fh:
            skip = self.skip_header
            for block, first_line in iter_text_blocks(fh, self.encoding, self.origin):
                text = block.replace("\r\n", "\n") if "\r" in block else block
                lines = text.split("\n")
                if lines and lines[-1] == "":
                    lines.pop()  # the block ends with a newline
                start = 0
                if skip:
                    start, skip = 1, False
                for off in range(start, len(lines), batch_size):
                    part = lines[off : off + batch_size]
                    if "" in part:
                        # Keep line numbers right when dropping blank lines.
                        numbers = [first_line + off + i for i, v in enumerate(part) if v]
                        part = [v for v in part if v]
                        if part:
                            yield RawBatch(part, self.origin, lines=numbers)
                    else:
                        yield RawBatch(part, self.origin, first_line=first_line + off)


def _iter_lines_keepends(fh: IO[bytes], encoding: str, origin: str) -> Iterator[str]:
    for text, _ in iter_text_blocks(fh, encoding, origin):
        parts = text.split("\n")
        last = parts.pop()
        for p in parts:
            yield p + "\n"
        if last:
            yield last


class CsvSource(_FileSource):
    """A delimited file with (by default) a header row; one column holds the identifiers.

    :param path: local path, URL or ObjectStoragePath.
    :param column: header name (case-insensitive) or 0-based index of the identifier column.
    :param delimiter: field delimiter.
    :param encoding: file encoding.
    :param has_header: the first row holds column names.
    """

    def __init__(
        self,
        path: PathLike,
        column: str | int,
        *,
        delimiter: str = ",",
        encoding: str = "utf-8",
        has_header: bool = True,
        quotechar: str = '"',
    ) -> None:
        if isinstance(column, str) and not has_header:
            raise ValueError("a column name needs has_header=True; give a 0-based index instead")
        super().__init__(path)
        self.column = column
        self.delimiter = delimiter
        self.encoding = encoding
        self.has_header = has_header
        self.quotechar = quotechar

    def iter_batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[RawBatch]:
        """Yield batches of the identifier column."""
        with open_binary(self.path) as fh:
            reader = csv.reader(
                _iter_lines_keepends(fh, self.encoding, self.origin),
                delimiter=self.delimiter,
                quotechar=self.quotechar,
            )
            index = self._resolve_column(reader)
            values: list[str] = []
            lines: list[int] = []
            try:
                for row in reader:
                    if not row:
                        continue  # blank line
                    # A short row has no value for the column: counted invalid as empty.
                    values.append(row[index] if index < len(row) else "")
                    lines.append(reader.line_num)
                    if len(values) >= batch_size:
                        yield RawBatch(values, self.origin, lines=lines, column=self.column)
                        values, lines = [], []
            except csv.Error as exc:
                raise SourceError(f"malformed CSV ({exc})", origin=self.origin, line=reader.line_num) from None
            if values:
                yield RawBatch(values, self.origin, lines=lines, column=self.column)

    def _resolve_column(self, reader: Any) -> int:
        if not self.has_header:
            return int(self.column)
        try:
            header = next(reader)
        except StopIteration:
            return int(self.column) if isinstance(self.column, int) else 0
        if isinstance(self.column, int):
            if self.column >= len(header):
                raise SourceError(
                    f"no column at index {self.column}; the header has {len(header)} columns",
                    origin=self.origin,
                    line=1,
                    column=self.column,
                )
            return self.column
        names = [h.strip().lower() for h in header]
        want = self.column.strip().lower()
        if want not in names:
            # Header names are column labels, not personal data: safe to list.
            raise SourceError(
                f"column {self.column!r} not found; the header has {header!r}",
                origin=self.origin,
                line=1,
                column=self.column,
            )
        return names.index(want)


class JsonLinesSource(_FileSource):
    """JSON lines: one object per line; ``field`` holds the identifier.

    A malformed line is an error (file, line, column), not an invalid row: it usually means the
    file is not what the task thinks it is. A missing field on a row counts as invalid
    (``empty``); a field missing from the first object is an error (wrong field name).
    """

    def __init__(self, path: PathLike, field: str, *, encoding: str = "utf-8") -> None:
        super().__init__(path)
        self.field = field
        self.encoding = encoding

    def iter_batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[RawBatch]:
        """Yield batches of the field's values."""
        loads = json.loads
        first = True
        with open_binary(self.path) as fh:
            values: list[str] = []
            lines: list[int] = []
            for text, first_line in iter_text_blocks(fh, self.encoding, self.origin):
                for i, line in enumerate(text.split("\n")):
                    if not line.strip():
                        continue
                    number = first_line + i
                    try:
                        obj = loads(line)
                    except json.JSONDecodeError as exc:
                        raise SourceError(
                            f"malformed JSON ({exc.msg})", origin=self.origin, line=number, column=exc.colno
                        ) from None
                    if not isinstance(obj, dict):
                        raise SourceError("expected a JSON object", origin=self.origin, line=number)
                    if first and self.field not in obj:
                        raise SourceError(
                            f"field {self.field!r} not in the first object; its keys are {sorted(obj)!r}",
                            origin=self.origin,
                            line=number,
                            column=self.field,
                        )
                    first = False
                    values.append(_as_text(obj.get(self.field)))
                    lines.append(number)
                    if len(values) >= batch_size:
                        yield RawBatch(values, self.origin, lines=lines, column=self.field)
                        values, lines = [], []
            if values:
                yield RawBatch(values, self.origin, lines=lines, column=self.field)


def _as_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return ""  # a boolean is never an identifier; counted as empty
    if isinstance(value, int):
        return str(value)  # phone numbers and customer ids stored as numbers
    # Floats, lists, objects: not an identifier. A NUL character makes every normaliser reject
    # the value without echoing its content.
    return "\x00" + type(value).__name__


class ParquetSource(_FileSource):
    """One column of a Parquet file, read in record batches. Needs the ``parquet`` extra (pyarrow)."""

    def __init__(self, path: PathLike, column: str) -> None:
        super().__init__(path)
        self.column = column

    def iter_batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[RawBatch]:
        """Yield batches of the column; nulls become empty values (invalid)."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:  # pragma: no cover - depends on the environment
            raise ImportError(
                "reading Parquet needs pyarrow: pip install 'airflow-audience-provider[parquet]'"
            ) from None
        with open_binary(self.path) as fh:
            pf = pq.ParquetFile(fh)
            names = pf.schema_arrow.names
            if self.column not in names:
                raise SourceError(
                    f"column {self.column!r} not found; columns are {names!r}",
                    origin=self.origin,
                    column=self.column,
                )
            col_type = pf.schema_arrow.field(self.column).type
            t = pa.types
            if not (t.is_string(col_type) or t.is_large_string(col_type) or t.is_integer(col_type)):
                raise WrongIdentifierTypeError(
                    f"column {self.column!r} has type {col_type}, expected text",
                    origin=self.origin,
                    column=self.column,
                )
            row = 1
            for rb in pf.iter_batches(batch_size=batch_size, columns=[self.column]):
                raw = rb.column(0).to_pylist()
                values = [_as_text(v) for v in raw]
                yield RawBatch(values, self.origin, first_line=row, column=self.column)
                row += len(values)


class IterableSource:
    """Any Python iterable of values (``str``; ``bytes`` are decoded as UTF-8; ints as text).

    :param values: the iterable; consumed once.
    :param origin: a name for messages.
    """

    def __init__(self, values: Iterable[Any], *, origin: str = "<iterable>") -> None:
        self.values = values
        self.origin = origin

    def iter_batches(self, batch_size: int = DEFAULT_BATCH_SIZE) -> Iterator[RawBatch]:
        """Yield batches; the "line" of a value is its 1-based position."""
        values = self.values
        parts: Iterable[list[Any]]
        if isinstance(values, list):  # cut by slicing: no iterator step per value
            parts = (values[i : i + batch_size] for i in range(0, len(values), batch_size))
        else:
            it = iter(values)
            parts = iter(lambda: list(itertools.islice(it, batch_size)), [])
        position = 1
        for raw in parts:
            part = raw
            if operator.countOf(map(type, raw), str) != len(raw):  # C-level check; the common case is all str
                part = [self._text(v, position + i) for i, v in enumerate(raw)]
            yield RawBatch(part, self.origin, first_line=position)
            position += len(part)

    def _text(self, value: object, position: int) -> str:
        if isinstance(value, bytes):
            try:
                return value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise SourceError(
                    "bytes that are not valid UTF-8", origin=self.origin, line=position, column=exc.start + 1
                ) from None
        return _as_text(value)


_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".txt": "text",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def open_source(
    spec: IdentifierSource | PathLike | Iterable[Any] | dict[str, Any],
    *,
    format: str | None = None,
    column: str | int | None = None,
    encoding: str = "utf-8",
    delimiter: str | None = None,
    has_header: bool = True,
) -> IdentifierSource:
    """Build a source from what a task was given.

    ``spec`` may be a source object, a path (str, ``os.PathLike``, ObjectStoragePath), an upstream
    task's XCom value (a path, or a dict ``{"path": ..., "format": ..., "column": ...}`` — a
    reference to the rows, never the rows themselves), or an iterable of values.

    The format comes from ``format`` or the file suffix (``.csv``, ``.tsv``, ``.txt``, ``.jsonl``,
    ``.ndjson``, ``.parquet``, each optionally ``.gz``).

    :raises ValueError: when the format cannot be told or a needed column is missing.
    """
    if isinstance(spec, IdentifierSource):
        return spec
    if isinstance(spec, dict):
        options = dict(spec)
        path = options.pop("path", None)
        if path is None:
            raise ValueError("an XCom source dict needs a 'path' key")
        return open_source(
            path,
            format=options.pop("format", format),
            column=options.pop("column", column),
            encoding=options.pop("encoding", encoding),
            delimiter=options.pop("delimiter", delimiter),
            has_header=options.pop("has_header", has_header),
        )
    is_path = isinstance(spec, (str, os.PathLike)) or (hasattr(spec, "open") and hasattr(spec, "suffix"))
    if not is_path:
        if isinstance(spec, (bytes, bytearray)):
            raise TypeError("give a path or an iterable of values, not raw bytes")
        return IterableSource(spec)  # type: ignore[arg-type]
    fmt = format
    if fmt is None:
        name = str(spec).lower()
        if name.endswith(".gz"):
            name = name[:-3]
        fmt = _FORMATS.get(os.path.splitext(name)[1])
        if fmt is None:
            raise ValueError(f"cannot tell the format of {describe_path(spec)}; pass format=...")
    if fmt in ("csv", "tsv"):
        if column is None:
            raise ValueError("a CSV source needs column=<header name or index>")
        return CsvSource(
            spec,
            column,
            delimiter=delimiter or ("\t" if fmt == "tsv" else ","),
            encoding=encoding,
            has_header=has_header,
        )
    if fmt == "text":
        return TextSource(spec, encoding=encoding)
    if fmt == "jsonl":
        if not isinstance(column, str):
            raise ValueError("a JSON lines source needs column=<field name>")
        return JsonLinesSource(spec, column, encoding=encoding)
    if fmt == "parquet":
        if not isinstance(column, str):
            raise ValueError("a Parquet source needs column=<column name>")
        return ParquetSource(spec, column)
    raise ValueError(f"unknown format {fmt!r}; use csv, tsv, text, jsonl or parquet")


def read_all(source: IdentifierSource) -> list[str]:
    """All raw values of a source (tests and small lists only)."""
    return [v for b in source.iter_batches() for v in b.values]


__all__ = [
    "CsvSource",
    "IdentifierSource",
    "IterableSource",
    "JsonLinesSource",
    "ParquetSource",
    "RawBatch",
    "TextSource",
    "open_binary",
    "open_source",
]
