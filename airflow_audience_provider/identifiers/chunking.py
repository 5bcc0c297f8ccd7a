"""Cutting identifier streams into vendor-sized chunks, and progress lines while sending them.

A chunk never exceeds the rule's ``max_ids_per_chunk`` nor its ``max_bytes_per_chunk``; the byte
size of a chunk is counted as the vendor file would hold it: the header, then each value plus
``bytes_per_row_overhead`` (the newline).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO

from airflow_audience_provider.identifiers.rules import VendorRule

log = logging.getLogger(__name__)

ADD = "add"
REMOVE = "remove"
REPLACE = "replace"


@dataclass(frozen=True)
class Chunk:
    """One request's or one file's worth of output values.

    Small chunks hold their values; chunks of fixed-length values (hashes) point at a byte range
    of the engine's work file instead, so a 1 GB Yandex.Audience file never sits in memory as a
    list. Either way, :attr:`identifiers` gives the values and :meth:`write_to` streams the vendor
    file. A file-backed chunk is valid only during the sender call that receives it.

    :param operation: ``"add"``, ``"remove"`` or ``"replace"`` (the list becomes exactly this chunk;
        later chunks of the same replace arrive as ``"add"``).
    :param index: 1-based position among the chunks of this run.
    :param total: number of chunks of this run (adds, removes and the replace together).
    :param rule: the vendor rule (gives the vendor's identifier type name).
    :param values: the hashed (or normalised) values, never raw input; None when file-backed.
    :param path: work file holding the values, one per line (file-backed chunks).
    :param offset: byte offset of the first value in ``path``.
    :param nbytes: bytes of the values in ``path`` (newlines included).
    :param count: number of values in ``path`` or ``text``.
    :param text: the values as one string, one per line, each line ending with a newline (chunks
        cut from in-memory output by :class:`FixedWidthChunker`; no per-value list until asked).
    """

    operation: str
    index: int
    total: int
    rule: VendorRule = field(repr=False)
    values: list[str] | None = field(default=None, repr=False)
    path: str | None = field(default=None, repr=False)
    offset: int = 0
    nbytes: int = 0
    count: int = 0
    text: str | None = field(default=None, repr=False)

    @property
    def vendor_identifier_type(self) -> str:
        """The identifier type name the vendor API expects."""
        return self.rule.vendor_identifier_type

    @property
    def identifiers(self) -> list[str]:
        """The values as a list (read from the work file for file-backed chunks, on each access)."""
        if self.values is not None:
            return self.values
        return self.lines_bytes().decode("utf-8", "surrogatepass").split("\n")[:-1]

    def lines_bytes(self) -> bytes:
        """The values as UTF-8 text, each followed by a newline (read from the work file when file-backed)."""
        if self.values is not None:
            return "".join(f"{v}\n" for v in self.values).encode("utf-8", "surrogatepass")
        if self.text is not None:
            return self.text.encode("utf-8", "surrogatepass")
        assert self.path is not None
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            return fh.read(self.nbytes)

    def read_lines_into(self, view: memoryview) -> None:
        """Write :meth:`lines_bytes` into ``view`` (``nbytes`` long); file-backed chunks read straight into it."""
        if self.path is None:
            view[:] = self.lines_bytes()
            return
        with open(self.path, "rb", buffering=0) as fh:
            fh.seek(self.offset)
            done = 0
            while done < len(view):
                n = fh.readinto(view[done:])
                if not n:
                    raise OSError(f"work file {self.path} ended early")
                done += n

    def __len__(self) -> int:
        return len(self.values) if self.values is not None else self.count

    @property
    def file_size(self) -> int:
        """Bytes :meth:`write_to` writes (header included): the upload's size."""
        if self.values is not None:
            return len(render_file(self.rule, self.values))
        if self.text is not None:
            return len(self.rule.header.encode()) + len(self.text.encode("utf-8", "surrogatepass"))
        return len(self.rule.header.encode()) + self.nbytes

    def write_to(self, fh: IO[bytes], block: int = 1 << 20) -> int:
        """Write the vendor file (the rule's header, then one value per line); return bytes written."""
        if self.values is not None or self.text is not None:
            if self.text is not None:
                data = (self.rule.header + self.text).encode("utf-8", "surrogatepass")
            else:
                data = render_file(self.rule, self.values or [])
            fh.write(data)
            return len(data)
        assert self.path is not None
        header = self.rule.header.encode()
        fh.write(header)
        written = len(header)
        with open(self.path, "rb") as src:
            src.seek(self.offset)
            left = self.nbytes
            while left:
                data = src.read(min(block, left))
                if not data:
                    raise OSError(f"work file {self.path} ended early")
                fh.write(data)
                written += len(data)
                left -= len(data)
        return written


def _limits(rule: VendorRule) -> tuple[int, int | None, int]:
    max_ids = rule.max_ids_per_chunk or (1 << 62)
    budget = None
    if rule.max_bytes_per_chunk is not None:
        budget = rule.max_bytes_per_chunk - len(rule.header.encode())
        if budget <= 0:
            raise ValueError(f"rule {rule.key}: the header does not fit in max_bytes_per_chunk")
    return max_ids, budget, rule.bytes_per_row_overhead


def fixed_chunk_size(rule: VendorRule, value_length: int) -> int:
    """Identifiers per chunk when every value has ``value_length`` ASCII characters."""
    max_ids, budget, overhead = _limits(rule)
    if budget is None:
        return max_ids
    per_bytes = budget // (value_length + overhead)
    if per_bytes < 1:
        raise ValueError(f"rule {rule.key}: one value does not fit in max_bytes_per_chunk")
    return min(max_ids, per_bytes)


def iter_chunk_lists(values: Iterable[str], rule: VendorRule) -> Iterator[list[str]]:
    """Group values into lists that respect the rule's count and byte limits."""
    max_ids, budget, overhead = _limits(rule)
    fixed = rule.profile.output_length
    it = iter(values)
    if fixed is not None:
        size = fixed_chunk_size(rule, fixed)
        current: list[str] = []
        for v in it:
            current.append(v)
            if len(current) >= size:
                yield current
                current = []
        if current:
            yield current
        return
    current = []
    used = 0
    while True:
        # Blocks that fit the current chunk whole are taken with one size computation; only a block
        # that would cross the byte limit is walked value by value.
        room = max_ids - len(current)
        block = list(itertools.islice(it, min(CHUNK_BLOCK, room) if room > 0 else 1))
        if not block:
            break
        if room <= 0:  # the chunk is full and another value follows
            yield current
            current, used = [], 0
            block.extend(itertools.islice(it, min(CHUNK_BLOCK, max_ids) - 1))
        cost = _block_bytes(block, overhead) if budget is not None else 0
        if budget is None or used + cost <= budget:
            current.extend(block)
            used += cost
            continue
        for v in block:
            cost = len(v.encode("utf-8", "surrogatepass")) + overhead
            if cost > budget:
                raise ValueError(f"rule {rule.key}: a value longer than max_bytes_per_chunk cannot be sent")
            if current and (len(current) >= max_ids or used + cost > budget):
                yield current
                current, used = [], 0
            current.append(v)
            used += cost
    if current:
        yield current


#: Values sized at once when cutting variable-length values into chunks.
CHUNK_BLOCK = 4096


def _block_bytes(values: list[str], overhead: int) -> int:
    """Bytes ``values`` take in a vendor file: their UTF-8 text plus ``overhead`` per row."""
    return len("".join(values).encode("utf-8", "surrogatepass")) + overhead * len(values)


class ChunkCounter:
    """Counts the chunks a stream of values will need without keeping the values.

    Values fed by their sizes (:meth:`feed_sizes`) also give where each chunk lies in the work file
    written in the same order (:attr:`file_chunks`), so the chunks can point into it instead of
    being read back and cut again.
    """

    def __init__(self, rule: VendorRule) -> None:
        self.rule = rule
        self.values = 0
        self._fixed = rule.profile.output_length
        self._max_ids, self._budget, self._overhead = _limits(rule)
        self._chunks = 0
        self._in_chunk = 0
        self._used = 0
        #: (values, bytes in the work file) of each finished chunk; None once values came by :meth:`feed`
        self._bounds: list[tuple[int, int]] | None = []
        self._file_bytes = 0

    @property
    def file_chunks(self) -> list[tuple[int, int]] | None:
        """``(values, bytes)`` of each chunk in the work file (one value and a newline a line), in order.

        None when some values were fed by :meth:`feed` (their sizes were not all counted) or the
        values have a fixed length (:func:`iter_chunks_from_file` computes those chunks itself).
        """
        if self._bounds is None or self._fixed is not None:
            return None
        return [*self._bounds, (self._in_chunk, self._file_bytes)] if self._in_chunk else list(self._bounds)

    def _close_chunk(self) -> None:
        self._chunks += 1
        if self._bounds is not None:
            self._bounds.append((self._in_chunk, self._file_bytes))
        self._in_chunk, self._used, self._file_bytes = 0, 0, 0

    def feed(self, values: list[str]) -> None:
        """Account for values in stream order."""
        self.values += len(values)
        if self._fixed is not None:
            return  # computed from the count alone in chunks()
        if values:
            self._bounds = None
        start, budget = 0, self._budget
        while start < len(values):
            # As in iter_chunk_lists: a block that fits the current chunk whole is counted at once.
            room = self._max_ids - self._in_chunk
            if room <= 0:
                self._chunks += 1
                self._in_chunk, self._used, room = 0, 0, self._max_ids
            block = values[start : start + min(CHUNK_BLOCK, room)]
            start += len(block)
            cost = _block_bytes(block, self._overhead) if budget is not None else 0
            if budget is None or self._used + cost <= budget:
                self._in_chunk += len(block)
                self._used += cost
                continue
            for v in block:
                cost = len(v.encode("utf-8", "surrogatepass")) + self._overhead
                if self._in_chunk and (self._in_chunk >= self._max_ids or self._used + cost > budget):
                    self._chunks += 1
                    self._in_chunk, self._used = 0, 0
                self._in_chunk += 1
                self._used += cost

    def feed_sizes(self, cumulative: Sequence[int]) -> None:
        """:meth:`feed` of values given by their sizes: ``cumulative[j]`` is the UTF-8 bytes of the first ``j``.

        ``cumulative`` has one entry more than there are values (``cumulative[0] == 0``); any
        sequence will do (a polars Series is indexed a few times per chunk, never walked). Chunk
        ends are found by bisection, where :meth:`feed` walks the values.
        """
        n = len(cumulative) - 1
        self.values += n
        if self._fixed is not None or n <= 0:
            return
        budget, overhead = self._budget, self._overhead
        costs = _Costs(cumulative, overhead)
        start = 0
        while start < n:
            room = self._max_ids - self._in_chunk
            if room <= 0:  # the chunk is full and another value follows
                self._close_chunk()
                room = self._max_ids
            end = min(n, start + room)
            if budget is not None:
                base = costs[start]
                # the last value that still fits the chunk's bytes (costs grow with every value)
                end = max(bisect.bisect_right(costs, base + budget - self._used, start, end + 1) - 1, start)
                if end == start:
                    if self._in_chunk:  # the next value opens a new chunk
                        self._close_chunk()
                        continue
                    # a value alone over the budget still takes a chunk of its own; it cannot be
                    # sent, which the chunks read back from the file say (iter_chunk_lists)
                    end = start + 1
                    self._bounds = None
                self._used += costs[end] - base
            if self._bounds is not None:  # a line per value: its UTF-8 bytes and a newline
                self._file_bytes += int(cumulative[end]) - int(cumulative[start]) + end - start
            self._in_chunk += end - start
            start = end

    def feed_count(self, n: int) -> None:
        """Account for ``n`` values of the rule's fixed length (their count is all the chunks depend on)."""
        if self._fixed is None:
            raise ValueError(f"rule {self.rule.key}: outputs have no fixed length")
        self.values += n

    @property
    def chunks(self) -> int:
        """Chunks needed for everything fed so far."""
        if self._fixed is not None:
            return math.ceil(self.values / fixed_chunk_size(self.rule, self._fixed)) if self.values else 0
        return self._chunks + (1 if self._in_chunk else 0)


class _Costs:
    """Cumulative costs in a vendor file of values given by cumulative UTF-8 sizes: ``sizes[j] + overhead * j``."""

    def __init__(self, sizes: Sequence[int], overhead: int) -> None:
        self._sizes = sizes
        self._overhead = overhead

    def __len__(self) -> int:
        return len(self._sizes)

    def __getitem__(self, j: int) -> int:
        return int(self._sizes[j]) + self._overhead * j


def iter_chunks_from_file(
    path: str | os.PathLike[str],
    rule: VendorRule,
    operation: str,
    *,
    first_index: int = 1,
    total: int = 0,
    bounds: list[tuple[int, int]] | None = None,
) -> Iterator[Chunk]:
    """Chunks of a work file of values, one per line (the engine's additions or removals).

    Fixed-length values (hex digests) give file-backed chunks: offsets are computed, nothing is
    read until a sender asks. Other values are read line by line into list-backed chunks, unless
    ``bounds`` says where each chunk lies (:attr:`ChunkCounter.file_chunks`): then they are
    file-backed too.

    :param operation: operation of every chunk (the engine turns the first one of a full replace
        into ``"replace"``).
    :param first_index: index of the first chunk.
    :param total: total chunks of the run, for ``Chunk.total``.
    :param bounds: ``(values, bytes)`` of each chunk of a file of values of varying length; used
        only when they cover the file exactly.
    """
    fixed = rule.profile.output_length
    index = first_index
    if fixed is None and bounds is not None and sum(nbytes for _, nbytes in bounds) == os.path.getsize(path):
        offset = 0
        for count, nbytes in bounds:
            yield Chunk(operation, index, total, rule, path=os.fspath(path), offset=offset, nbytes=nbytes, count=count)
            offset += nbytes
            index += 1
        return
    if fixed is None:
        with open(path, encoding="utf-8", errors="surrogatepass", newline="\n") as fh:
            lines = itertools.chain.from_iterable(_line_blocks(fh))
            for values in iter_chunk_lists(lines, rule):
                yield Chunk(operation, index, total, rule, values=values)
                index += 1
        return
    size = fixed_chunk_size(rule, fixed)
    width = fixed + 1
    file_size = os.path.getsize(path)
    if file_size % width:
        raise ValueError(f"{path}: values are not all {fixed} characters long")
    offset = 0
    while offset < file_size:
        nbytes = min(size * width, file_size - offset)
        yield Chunk(
            operation, index, total, rule, path=os.fspath(path), offset=offset, nbytes=nbytes, count=nbytes // width
        )
        offset += nbytes
        index += 1


def _line_blocks(fh: IO[str], block: int = 1 << 20) -> Iterator[list[str]]:
    """The lines of a text file (each ending with a newline), without the newlines, a block at a time."""
    rest = ""
    while data := fh.read(block):
        data = rest + data
        cut = data.rfind("\n")
        if cut < 0:
            rest = data
            continue
        rest = data[cut + 1 :]
        yield data[:cut].split("\n")
    if rest:
        raise ValueError(f"{fh.name}: the last line has no newline")


class GrowingFile:
    """A work file another thread is still writing: how many of its bytes are complete.

    The writer flushes, then :meth:`publish` es the size; a reader in another thread waits for
    the bytes it needs. :meth:`finish` gives the final size; :meth:`abort` makes every wait raise
    (the writer failed: nothing more will come).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._size = 0
        self._done = False
        self._error: BaseException | None = None

    def publish(self, size: int) -> None:
        """The first ``size`` bytes are written and flushed."""
        with self._cond:
            self._size = max(self._size, size)
            self._cond.notify_all()

    def finish(self, size: int) -> None:
        """The file is complete at ``size`` bytes."""
        with self._cond:
            self._size = size
            self._done = True
            self._cond.notify_all()

    def abort(self, error: BaseException) -> None:
        """The writer failed: readers waiting or arriving later raise ``error``."""
        with self._cond:
            self._error = error
            self._cond.notify_all()

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` was called."""
        return self._done

    def wait_for(self, size: int) -> tuple[int, bool]:
        """Wait until ``size`` bytes are complete or the file is; return ``(complete bytes, finished)``."""
        with self._cond:
            while self._error is None and not self._done and self._size < size:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            return self._size, self._done


def iter_growing_chunks(
    path: str | os.PathLike[str], rule: VendorRule, operation: str, growing: GrowingFile, *, first_index: int = 1
) -> Iterator[Chunk]:
    """:func:`iter_chunks_from_file` for a file of fixed-length values that is still being written.

    A chunk is yielded once its bytes are complete and it is known whether another chunk follows
    (a byte after it is written, or the file is finished), so a sender can start while the engine
    still writes the file. ``Chunk.total`` is exact once the file is finished; before that it is
    ``index + 1``, the chunks known to exist (so a sender can tell a one-chunk list from a longer one).
    """
    fixed = rule.profile.output_length
    if fixed is None:
        raise ValueError(f"rule {rule.key}: outputs have no fixed length")
    size = fixed_chunk_size(rule, fixed)
    width = fixed + 1
    step = size * width
    index, offset = first_index, 0
    while True:
        available, finished = growing.wait_for(offset + step + 1)
        if finished and available % width:
            raise ValueError(f"{path}: values are not all {fixed} characters long")
        nbytes = min(step, available - offset)
        if nbytes <= 0:
            return
        total = index - 1 + math.ceil((available - offset) / step) if finished else index + 1
        yield Chunk(
            operation, index, total, rule, path=os.fspath(path), offset=offset, nbytes=nbytes, count=nbytes // width
        )
        offset += nbytes
        index += 1


class FixedWidthChunker:
    """Cuts in-memory fixed-length outputs (hex digests) into chunks without a per-value list.

    Feed it newline-joined texts of values (what :func:`~.hashing.process_batch` puts in each
    partition); it yields :class:`Chunk` objects of exactly ``fixed_chunk_size`` values, each
    holding its values as one text cut at a computed offset (every line is ``value_length + 1``
    characters), like the file-backed chunks of :func:`iter_chunks_from_file`.
    """

    def __init__(self, rule: VendorRule, operation: str = ADD) -> None:
        fixed = rule.profile.output_length
        if fixed is None:
            raise ValueError(f"rule {rule.key}: outputs have no fixed length")
        self.rule = rule
        self.operation = operation
        self.size = fixed_chunk_size(rule, fixed)
        self.width = fixed + 1
        self._pending: list[str] = []
        self._count = 0
        self.chunks = 0

    def feed(self, texts: Iterable[str]) -> Iterator[Chunk]:
        """Add values (each text: values joined by newlines); yield the chunks that are full."""
        for t in texts:
            if t:
                self._pending.append(t)
                self._count += (len(t) + 1) // self.width
        if self._count >= self.size:
            yield from self._cut(final=False)

    def finish(self) -> Iterator[Chunk]:
        """Yield the last, partial chunk (if any values are left)."""
        if self._count:
            yield from self._cut(final=True)

    def _cut(self, *, final: bool) -> Iterator[Chunk]:
        # Each value is copied once, into its chunk's text: pieces are taken whole while they fit
        # and only the piece that straddles a chunk boundary is sliced.
        width = self.width
        pieces = self._pending
        self._pending = []
        parts: list[str] = []
        in_chunk = 0
        for whole in pieces:
            piece = whole
            while piece:
                count = (len(piece) + 1) // width
                room = self.size - in_chunk
                if count <= room:
                    parts.append(piece)
                    in_chunk += count
                    piece = ""
                else:
                    parts.append(piece[: room * width - 1])
                    in_chunk += room
                    piece = piece[room * width :]
                if in_chunk == self.size:
                    parts.append("")  # the final newline, without another copy
                    yield self._chunk("\n".join(parts), in_chunk)
                    self._count -= in_chunk
                    parts, in_chunk = [], 0
        if in_chunk and final:
            parts.append("")
            yield self._chunk("\n".join(parts), in_chunk)
            self._count -= in_chunk
        elif in_chunk:
            self._pending = parts

    def _chunk(self, text: str, count: int) -> Chunk:
        self.chunks += 1
        return Chunk(self.operation, self.chunks, 0, self.rule, text=text, count=count)


def render_file(rule: VendorRule, identifiers: list[str]) -> bytes:
    """The bytes of a file upload for vendors that take files (header, one value per line).

    Hashed values and trimmed ids need no CSV quoting (no commas, quotes or newlines: normalisers
    reject control characters and hex has none).
    """
    body = "\n".join(identifiers)
    return (rule.header + body + ("\n" if identifiers else "")).encode("utf-8")


class ProgressLogger:
    """Logs one progress line every ``every_chunks`` chunks or ``every_seconds`` seconds.

    Never per row: a line says chunk i of n, identifiers so far, identifiers per second and ETA.
    """

    def __init__(
        self,
        label: str,
        total_chunks: int,
        total_ids: int,
        *,
        every_chunks: int = 20,
        every_seconds: float = 30.0,
        logger: logging.Logger | None = None,
    ) -> None:
        self.label = label
        self.total_chunks = total_chunks
        self.total_ids = total_ids
        self.every_chunks = max(1, every_chunks)
        self.every_seconds = every_seconds
        self.log = logger or log
        self.done_chunks = 0
        self.done_ids = 0
        self._start = time.monotonic()
        self._last_log = self._start
        self.lines = 0

    def update(self, ids: int) -> None:
        """Record one finished chunk of ``ids`` identifiers."""
        self.done_chunks += 1
        self.done_ids += ids
        now = time.monotonic()
        last = self.done_chunks == self.total_chunks
        if last or self.done_chunks % self.every_chunks == 0 or now - self._last_log >= self.every_seconds:
            elapsed = max(now - self._start, 1e-9)
            rate = self.done_ids / elapsed
            remaining = max(self.total_ids - self.done_ids, 0)
            eta = remaining / rate if rate > 0 else float("inf")
            self.log.info(
                "%s: chunk %d of %d, %d of %d identifiers, %.0f ids/s, ETA %s",
                self.label,
                self.done_chunks,
                self.total_chunks,
                self.done_ids,
                self.total_ids,
                rate,
                "0s" if last else _fmt_eta(eta),
            )
            self._last_log = now
            self.lines += 1


def _fmt_eta(seconds: float) -> str:
    if math.isinf(seconds):
        return "unknown"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
