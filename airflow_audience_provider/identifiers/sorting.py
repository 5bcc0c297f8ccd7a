"""Spilling outputs to disk by partition, and the streaming merges behind de-duplication and diff.

Memory stays flat as the list grows:

* while reading, outputs are buffered per partition (256 partitions, see
  :mod:`~airflow_audience_provider.identifiers.hashing`) and appended to one file per partition
  whenever the buffer passes ``spill_bytes``;
* afterwards each partition is de-duplicated and diffed against the same partition of the
  snapshot, one partition at a time. A partition is 1/256 of the list; if one still exceeds
  ``max_partition_bytes`` it is processed by an external sort (sorted runs on disk, k-way merge)
  instead of in memory, so no partition size is ever held at once.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import os
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from airflow_audience_provider.identifiers.hashing import PARTITION_KEYS
from airflow_audience_provider.identifiers.kernel import PREFIX_DIGITS

DEFAULT_SPILL_BYTES = 32 << 20
#: A columnar list stays in memory, never spilled, while it is below this many times ``spill_bytes``
#: (64 MiB of digests by default, ~1M values): writing and reading back the spill cost ~12% of a
#: 1M-value sync's CPU, and past it the first spill writes segments of ``spill_bytes`` each. The
#: peak of a long list (the budget, then spills) stays within 1.25x that of a list kept whole.
KEEP_FACTOR = 2
DEFAULT_MAX_PARTITION_BYTES = 16 << 20  # in memory a partition takes ~4x its file size (set + sorted list)
DEFAULT_RUN_ITEMS = 200_000


class PartitionSpill:
    """Per-partition buffers of output values, spilled to disk one segment file per spill.

    Each spill writes every buffered partition into one new segment file, one after the other,
    and remembers where each partition's piece lies; a partition is read back from its pieces.
    One file per spill (not one per partition) keeps file creations at a few per run: on a
    loaded host, creating and opening 256 partition files cost more than writing them.

    :param directory: private working directory (removed by the caller).
    :param name: file name prefix, unique per normalisation profile.
    :param spill_bytes: buffered bytes that trigger a spill.
    """

    def __init__(self, directory: Path, name: str, spill_bytes: int = DEFAULT_SPILL_BYTES) -> None:
        self.directory = directory
        self.name = name
        self.spill_bytes = spill_bytes
        self._buffers: dict[str, list[str]] = {}
        self._buffered = 0
        self._segments: list[IO[bytes]] = []
        #: partition key -> (segment index, offset, length in bytes) of each spilled piece
        self._pieces: dict[str, list[tuple[int, int, int]]] = {}
        self.count = 0

    def add(self, partitions: dict[str, str], count: int) -> None:
        """Add one batch's partitioned outputs (as returned by ``process_batch``)."""
        buffers = self._buffers
        for key, text in partitions.items():
            if text:
                buffers.setdefault(key, []).append(text)
                self._buffered += len(text) + 1
        self.count += count
        if self._buffered >= self.spill_bytes:
            self.flush()

    def flush(self) -> None:
        """Write the buffers to a new segment file."""
        if not self._buffers:
            return
        index = len(self._segments)
        fh = open(self._path(index), "w+b")  # noqa: SIM115 - kept open for reading back, closed in close()
        self._segments.append(fh)
        offset = 0
        for key in sorted(self._buffers):
            data = ("\n".join(self._buffers[key]) + "\n").encode("utf-8", "surrogatepass")
            fh.write(data)
            self._pieces.setdefault(key, []).append((index, offset, len(data)))
            offset += len(data)
        fh.flush()
        self._buffers = {}
        self._buffered = 0

    def _path(self, index: int) -> Path:
        return self.directory / f"{self.name}-{index}.spill"

    def partition_bytes(self, key: str) -> int:
        """Bytes of a partition (on disk plus buffered)."""
        size = sum(len(t) + 1 for t in self._buffers.get(key, ()))
        return size + sum(length for _, _, length in self._pieces.get(key, ()))

    def _read_piece(self, index: int, offset: int, length: int) -> str:
        fh = self._segments[index]
        fh.seek(offset)
        return fh.read(length).decode("utf-8", "surrogatepass")

    def read(self, key: str) -> list[str]:
        """All values of a partition, with duplicates, in no particular order."""
        parts = [self._read_piece(*piece)[:-1] for piece in self._pieces.get(key, ())]
        parts.extend(self._buffers.get(key, ()))
        if not parts:
            return []
        return "\n".join(parts).split("\n")

    def iter_lines(self, key: str, block: int = 1 << 20) -> Iterator[str]:
        """Stream a partition's values (for partitions too big for memory)."""
        for index, offset, length in self._pieces.get(key, ()):
            rest = b""
            done = 0
            while done < length:
                size = min(block, length - done)
                fh = self._segments[index]
                fh.seek(offset + done)
                data = rest + fh.read(size)
                done += size
                lines = data.split(b"\n")
                rest = lines.pop()  # the piece ends with a newline: the last one is always empty
                for line in lines:
                    yield line.decode("utf-8", "surrogatepass")
        for text in self._buffers.get(key, ()):
            yield from text.split("\n")

    def partition_keys(self) -> tuple[str, ...]:
        """Partition keys in order (all 256; empty ones read as empty)."""
        return PARTITION_KEYS

    def close(self) -> None:
        """Close the segment files (the directory is removed by the owner)."""
        for fh in self._segments:
            fh.close()
        self._segments = []


#: Key ranges of a columnar spill segment, each its own IPC stream (256 / 64 = 4 partitions each).
COLUMNAR_BUCKETS = 64
#: Values the columnar plan takes in one block at most: 4 MB of digests (of 1, 4, 16, 64 or 256
#: blocks per 1M values, 16 measured fastest), small enough to be sorted and joined in cache.
COLUMNAR_BLOCK_ROWS = 65536
#: Below this many full blocks per plan thread, :meth:`ColumnarSpill.blocks` cuts the list into equal blocks.
BALANCED_BLOCKS = 4
#: Bytes per value the spill threshold counts for a digest (as its line in a text spill).
_HEX_ROW_BYTES = 65


def sort_by_prefix(pl: Any, frame: Any) -> Any:
    """``frame`` (``p``, ``h``) ordered by ``p``, rows of equal ``p`` in their order: one sort of integers.

    ``p`` (at most ``4 * PREFIX_DIGITS`` bits) and the row number are packed into one UInt64 and
    sorted as plain integers, then the rows are gathered in that order: for the read workers'
    batches in no order this costs ~24 ns per row, where ``DataFrame.sort`` (an argument sort of
    pairs) cost ~32. A frame too long for the row number to fit beside ``p`` is sorted as before.
    """
    n = frame.height
    bits = (n - 1).bit_length() if n > 1 else 0
    if n < 2 or 4 * PREFIX_DIGITS + bits > 64:
        return frame.sort("p", multithreaded=False)
    low = (1 << bits) - 1
    key = (pl.col("p").cast(pl.UInt64) * (1 << bits)) | pl.int_range(n, dtype=pl.UInt64)
    order = frame.select((key.sort() & low).cast(pl.get_index_type())).to_series()
    return frame.gather(order)


def hex_frame(pl: Any, digests: Any) -> Any:
    """Hex digests (a list or a polars Series) as the columnar path's frame: ``p`` (prefix), ``h``, ordered by ``p``."""
    h = pl.Series("h", digests, dtype=pl.String)
    p = h.str.slice(0, PREFIX_DIGITS).str.to_integer(base=16).alias("p")
    return sort_by_prefix(pl, pl.DataFrame([p, h]))


#: Bits a clear-text value's partition number is shifted by in ``p``: where a digest's prefix holds its first byte.
PARTITION_SHIFT = 4 * PREFIX_DIGITS - 8


def clear_frame(pl: Any, values: Any) -> Any:
    """Clear-text values (a list or a polars String Series) as the columnar path's frame: ``p``, ``h``, in no order.

    ``h`` is the value and ``p`` its partition number (the low byte of the CRC-32 of its UTF-8
    bytes, :func:`~airflow_audience_provider.identifiers.hashing.partition_of`) shifted by
    :data:`PARTITION_SHIFT`, so partition edges are those of digests. The CRC-32's low byte is
    taken in polars (:func:`crc32_low_bytes`), off the GIL.

    :raises UnicodeError: a value polars cannot hold (a lone surrogate).
    """
    h = pl.Series("h", values, dtype=pl.String)
    p = crc32_low_bytes(pl, h).cast(pl.Int64) * (1 << PARTITION_SHIFT)
    return pl.DataFrame([p.alias("p"), h])


#: Longest value, in bytes, whose CRC-32 :func:`crc32_low_bytes` takes in polars (a lane of the
#: sum below must not carry, so at most 255); longer values take ``zlib.crc32``.
CRC_COLUMN_BYTES = 64
#: The 8 bits of a byte, each in its own byte (lane) of a 64-bit word: a sum of at most 255 keeps each bit's parity.
_LANES = 0x0101010101010101
#: Fewer values than this take ``zlib.crc32`` in :func:`crc32_low_bytes` (less CPU than polars' fixed cost).
CRC_COLUMN_MIN_ROWS = 4096
#: Bytes of table lookups :func:`crc32_low_bytes` gathers at once (8 per byte of the values), 8 MiB.
_CRC_GATHER_BYTES = 8 << 20
#: Multiplying the lanes' low bits by this puts lane ``i`` at bit ``56 + i``, with no carries.
_GATHER_LANES = 0x0102040810204080


class _CrcTables:
    """Tables of :func:`crc32_low_bytes`: per distance from the end and byte, its term of the CRC's low byte."""

    def __init__(self, pl: Any) -> None:
        # CRC-32 is affine in the message bits: crc(m) = raw(m) ^ crc(zeros of len(m)), where raw
        # (zero start, no final inversion) is linear, so raw(m) is the XOR of the terms of m's
        # bytes, each depending only on the byte and its distance from the end; leading zero bytes
        # add nothing to raw, so values right-aligned with zeros share one table.
        spread = [sum(((b >> i) & 1) << (8 * i) for i in range(8)) for b in range(256)]
        lanes: list[int] = []
        for d in range(CRC_COLUMN_BYTES):
            row = [0]  # the term of byte b is the XOR of those of its bits: doubled one bit at a time
            for i in range(8):
                bit = spread[(zlib.crc32(bytes((1 << i,)) + bytes(d), 0xFFFFFFFF) ^ 0xFFFFFFFF) & 0xFF]
                row += [x ^ bit for x in row]
            lanes += row
        #: the low byte's bits, one per byte lane, of the byte ``b`` at distance ``d``: index ``256 * d + b``
        self.lanes = pl.Series(lanes, dtype=pl.UInt64)
        #: the low byte of the CRC-32 of ``n`` zero bytes, at index ``n``
        self.zeros = pl.Series([zlib.crc32(bytes(n)) & 0xFF for n in range(CRC_COLUMN_BYTES + 1)], dtype=pl.UInt64)
        self._offsets: dict[int, Any] = {}

    def offsets(self, pl: Any, width: int, rows: int, most: int) -> Any:
        """The table index of every byte of ``rows`` rows of ``width`` bytes: 256 times its distance from the end.

        Kept for the last few widths, for ``most`` rows (at least ``rows``), as one tiled Series sliced.
        """
        cache = self._offsets  # replaced, never changed in place: read workers share it
        found = cache.get(width)
        if found is None or len(found) < width * rows:
            row = [256 * (width - 1 - k) for k in range(width)]
            found = pl.Series(row * max(rows, most), dtype=pl.UInt16)
            self._offsets = dict([*list(cache.items())[-3:], (width, found)])
        return found.slice(0, width * rows)


_crc_tables: _CrcTables | None = None


def crc32_low_bytes(pl: Any, values: Any) -> Any:
    """``zlib.crc32(v.encode("utf-8")) & 0xFF`` of every value of a String Series, as a UInt64 Series.

    Computed column-wise in polars, which releases the GIL (``zlib.crc32`` per value holds it,
    ~80-100 ns per value with its bytes objects): ASCII values of at most
    :data:`CRC_COLUMN_BYTES` bytes are right-aligned with zero bytes into a byte matrix, each byte
    is looked up in a table by its value and its distance from the end, the lookups summed per row
    (one bit of the low byte per byte lane, its parity kept), and the length's constant XORed in.
    Other values (non-ASCII, longer) take ``zlib.crc32``, and so does a batch mostly of them or
    of fewer than :data:`CRC_COLUMN_MIN_ROWS` values (the polars calls cost ~0.4 ms a batch).
    """
    global _crc_tables
    n = len(values)
    if n < CRC_COLUMN_MIN_ROWS:
        return _zlib_low_bytes(pl, values)
    tables = _crc_tables
    if tables is None:
        tables = _crc_tables = _CrcTables(pl)
    size = values.str.len_bytes()
    width = size.max() or 0
    if not width:
        return tables.zeros.gather(size)  # every value is empty
    rows = _byte_rows(pl, values, width) if width <= CRC_COLUMN_BYTES else None
    index = None
    if rows is None or rows.null_count():  # a value is too long, or not ASCII (padded past the width)
        other = (size > CRC_COLUMN_BYTES) | (values.str.len_chars() != size)
        if other.sum() * 2 > n:
            return _zlib_low_bytes(pl, values)
        index = other.arg_true()
        size = size.clone().scatter(index, 0)
        width = size.max() or 0
        rows = _byte_rows(pl, values.clone().scatter(index, ""), width)
    if not width:
        low = tables.zeros.gather(size)
    else:
        at = rows.explode().cast(pl.UInt16)
        step = max(1, _CRC_GATHER_BYTES // (8 * width))  # rows per gather: its output stays small
        sums = []
        for lo in range(0, n, step):
            k = min(step, n - lo)
            where = at.slice(lo * width, k * width) + tables.offsets(pl, width, k, step)
            sums.append(tables.lanes.gather(where).reshape((k, width)).arr.sum())
        lanes = (sums[0] if len(sums) == 1 else pl.concat(sums)) & _LANES
        low = (lanes * _GATHER_LANES) // (1 << 56) ^ tables.zeros.gather(size)
    if index is not None:
        low = low.scatter(index, _zlib_low_bytes(pl, values.gather(index)))
    return low


def _byte_rows(pl: Any, values: Any, width: int) -> Any:
    """Values right-aligned with zero bytes as ``width``-byte arrays; null where the bytes are more (not ASCII)."""
    if not width:
        return None  # every value is empty
    rows = values.str.pad_start(width, "\x00").cast(pl.Binary)
    return rows.bin.reinterpret(dtype=pl.Array(pl.UInt8, width))


def _zlib_low_bytes(pl: Any, values: Any) -> Any:
    """:func:`crc32_low_bytes` by ``zlib.crc32`` per value."""
    return pl.Series(list(map(zlib.crc32, values.cast(pl.Binary).to_list())), dtype=pl.UInt64) & 0xFF


def sorted_unique_clear_frame(pl: Any, frame: Any, edges: Any) -> Any:
    """``sorted(set(values))`` of each partition of a clear-text frame (``p``, ``h``; rows in any order).

    The order of clear-text snapshots: by partition, then by value. polars orders strings by
    their UTF-8 bytes, which is the order of their code points, i.e. Python's. The rows are
    grouped by ``p``, each partition's values sorted on their own (a third cheaper than sorting
    the block's strings at once, and no gather of ``p``), then repeats dropped. Returns the frame.

    :param edges: the least ``p`` of each of the 256 partitions (:attr:`ColumnarSpill.partition_edges`).
    """
    if not frame.height:
        return frame
    frame = frame.sort("p", multithreaded=False)
    offsets: list[int] = frame.get_column("p").search_sorted(edges, "left").to_list()
    offsets.append(frame.height)
    values = frame.get_column("h")
    parts = [values.slice(lo, hi - lo).sort(multithreaded=False) for lo, hi in itertools.pairwise(offsets) if hi > lo]
    values = pl.concat(parts) if len(parts) > 1 else parts[0]
    # equal values share their partition, so a value equal to its predecessor is a repeat
    return pl.DataFrame([frame.get_column("p"), values]).filter((values != values.shift(1)).fill_null(True))


def sorted_unique_frame(pl: Any, frame: Any) -> Any:
    """``sorted(set(digests))`` of a columnar frame (``p``, ``h``; any row order), as a polars String Series.

    See :func:`sorted_unique_rows`.
    """
    return sorted_unique_rows(pl, frame).get_column("h")


def sorted_unique_rows(pl: Any, frame: Any) -> Any:
    """The rows of a columnar frame (``p``, ``h``; any row order) with distinct digests, sorted by digest.

    The digests are sorted by their 48-bit prefix (an integer sort, a tenth of the cost of sorting
    the strings). Rows with the prefix of their predecessor are then either the same digest
    (dropped) or, where two different digests share 48 bits, the whole frame is sorted again by
    the strings. Every call runs in the calling thread and releases the GIL.
    """
    if not frame.height:
        return pl.DataFrame([pl.Series("p", [], dtype=pl.Int64), pl.Series("h", [], dtype=pl.String)])
    frame = frame.sort("p", multithreaded=False)
    prefix, digests = frame.get_column("p"), frame.get_column("h")
    same = (prefix == prefix.shift(1)).fill_null(False)
    if same.any() and (digests.filter(same) != digests.shift(1).filter(same)).any():
        frame = frame.sort("h", multithreaded=False)
        digests = frame.get_column("h")
        same = (digests == digests.shift(1)).fill_null(False)
    return frame.filter(~same)


class ColumnarSpill:
    """:class:`PartitionSpill` for hex digests kept as polars columns from the kernel to the plan.

    Batches arrive as the kernel's frames (``p``, ``h``, in any order) and stay in memory while
    the whole list is below ``keep_bytes`` (counted as the text spill would count them); then,
    and from there on whenever the buffered frames pass ``spill_bytes``, they are spilled. A spill
    sorts up to ``spill_bytes`` of frames by ``p`` and writes :data:`COLUMNAR_BUCKETS` key ranges
    to one segment file, each an Arrow IPC stream with the digests laid out in order (so the plan
    reads them sequentially). Once anything was spilled, :meth:`finish` spills the rest too. A
    list that never passed ``keep_bytes`` is planned from memory. The plan then takes :meth:`blocks` of
    consecutive partitions of at most :data:`COLUMNAR_BLOCK_ROWS` values, so the work per value,
    and the memory (one bucket's pieces and one block), are the same at any list size.

    Clear-text values (``clear``) take the same path with ``h`` the value and ``p`` its partition
    number (:func:`clear_frame`); their bytes are counted as they are. A clear-text value polars
    cannot hold (a lone surrogate, which the exact rule accepts) moves everything to a
    :class:`PartitionSpill` (:attr:`text_spill`), and the Python plan runs.

    :param pl: the polars module.
    :param keep_bytes: the in-memory budget before the first spill (default ``KEEP_FACTOR * spill_bytes``).
    :param clear: the values are clear text, not hex digests.
    """

    def __init__(
        self,
        pl: Any,
        directory: Path,
        name: str,
        spill_bytes: int = DEFAULT_SPILL_BYTES,
        keep_bytes: int | None = None,
        *,
        clear: bool = False,
    ) -> None:
        self._pl = pl
        self.directory = directory
        self.name = name
        self.spill_bytes = spill_bytes
        self.keep_bytes = KEEP_FACTOR * spill_bytes if keep_bytes is None else keep_bytes
        self.clear = clear
        self._frames: list[Any] = []
        self._bytes = 0
        self._text: PartitionSpill | None = None
        self._segments: list[IO[bytes]] = []
        #: per segment: (offset, length) of each bucket's IPC stream, and the 257 row offsets of the partitions
        self._pieces: list[list[tuple[int, int]]] = []
        self._offsets: list[list[int]] = []
        self._cache: dict[tuple[int, int], Any] = {}
        self._partition_edges = pl.Series([k << PARTITION_SHIFT for k in range(256)], dtype=pl.Int64)
        self.count = 0

    @property
    def polars(self) -> Any:
        """The polars module."""
        return self._pl

    @property
    def partition_edges(self) -> Any:
        """The least ``p`` of each of the 256 partitions (an Int64 Series)."""
        return self._partition_edges

    @property
    def text_spill(self) -> PartitionSpill | None:
        """Where every value went once a clear-text value did not fit polars (the Python plan then runs); else None."""
        return self._text

    def add(self, partitions: dict[str, str], count: int) -> None:
        """Add a batch's partitioned text outputs (a batch the kernel did not take)."""
        if self._text is None:
            text = "\n".join(t for t in partitions.values() if t)
            values = text.split("\n") if text else []
            try:
                frame = clear_frame(self._pl, values) if self.clear else hex_frame(self._pl, values)
            except UnicodeError:
                if not self.clear:
                    raise
                self._to_text()
            else:
                self.add_frame(frame, count)
                return
        assert self._text is not None
        self._text.add(partitions, count)
        self.count += count

    def add_frame(self, frame: Any, count: int) -> None:
        """Add one batch's values (``p``, ``h``, in any order); ``count`` valid outputs."""
        self.count += count
        if self._text is not None:
            self._text.add(self._frame_partitions(frame), count)
            return
        if frame.height:
            self._frames.append(frame)
            self._bytes += self._frame_bytes(frame)
        if self._bytes >= (self.spill_bytes if self._segments else self.keep_bytes):
            self.flush()

    def _frame_bytes(self, frame: Any) -> int:
        """A frame's bytes as the text spill would count them (a line per value)."""
        if self.clear:
            return int(frame.get_column("h").str.len_bytes().sum()) + frame.height
        return frame.height * _HEX_ROW_BYTES

    def _frame_partitions(self, frame: Any) -> dict[str, str]:
        """A frame's values as :meth:`PartitionSpill.add` takes them: partition key -> values joined by newlines."""
        frame = frame.sort("p", multithreaded=False)
        offsets = self._partition_offsets(frame)
        values = frame.get_column("h")
        return {
            PARTITION_KEYS[k]: values.slice(offsets[k], offsets[k + 1] - offsets[k]).str.join("\n").item()
            for k in range(256)
            if offsets[k + 1] > offsets[k]
        }

    def _to_text(self) -> None:
        """Move every value so far, in memory or spilled, to a :class:`PartitionSpill` that takes the rest."""
        text = PartitionSpill(self.directory, f"{self.name}-text", self.spill_bytes)
        for frame in self._frames:
            text.add(self._frame_partitions(frame), 0)
        for segment, pieces in enumerate(self._pieces):
            for bucket in range(len(pieces)):
                text.add(self._frame_partitions(self._piece(segment, bucket)), 0)
                self._cache.clear()
        text.count = self.count
        self._text = text
        self._frames, self._bytes = [], 0
        for fh in self._segments:
            fh.close()
        self._segments, self._pieces, self._offsets = [], [], []

    def _partition_offsets(self, frame: Any) -> list[int]:
        """Row offsets of the 256 partitions in a frame ordered by ``p``, and its height."""
        offsets: list[int] = frame.get_column("p").search_sorted(self._partition_edges, "left").to_list()
        offsets.append(frame.height)
        return offsets

    def flush(self) -> None:
        """Write the buffered frames to new segment files of about ``spill_bytes`` each."""
        frames = collections.deque((f, self._frame_bytes(f)) for f in self._frames)
        self._frames, self._bytes = [], 0
        while frames:  # each group is dropped once written, so memory falls as segments are written
            first, size = frames.popleft()
            group = [first]
            while frames and size + frames[0][1] <= self.spill_bytes:
                more, more_size = frames.popleft()
                size += more_size
                group.append(more)
            self._write_segment(group)

    def _write_segment(self, frames: list[Any]) -> None:
        """Write frames, sorted, to a new segment file: one IPC stream per bucket."""
        pl = self._pl
        whole = pl.concat(frames).sort("p", multithreaded=False)
        offsets = self._partition_offsets(whole)
        fh = open(self.directory / f"{self.name}-{len(self._segments)}.ipc", "w+b")  # noqa: SIM115 - closed in close()
        self._segments.append(fh)
        pieces = []
        per = 256 // COLUMNAR_BUCKETS
        for b in range(COLUMNAR_BUCKETS):
            lo, hi = offsets[b * per], offsets[(b + 1) * per]
            start = fh.tell()
            # The oldest format writes the strings one after the other, in the sorted order.
            piece = whole.slice(lo, hi - lo)
            piece.write_ipc_stream(fh, compression="uncompressed", compat_level=pl.CompatLevel.oldest())
            pieces.append((start, fh.tell() - start))
        fh.flush()
        self._pieces.append(pieces)
        self._offsets.append(offsets)

    def finish(self) -> None:
        """The read is over: once anything went to disk, the rest goes too (the plan holds little at a time)."""
        if self._text is None and self._segments:
            self.flush()

    def blocks(self, workers: int = 1) -> Iterator[tuple[tuple[str, ...], Any]]:
        """``(partition keys, their values with duplicates in no particular order as one frame)``, in key order.

        A block is a run of consecutive partitions of at most :data:`COLUMNAR_BLOCK_ROWS` values
        (a bigger partition is a block of its own); an empty list gives one empty block. With
        ``workers`` plan threads, a list of fewer than :data:`BALANCED_BLOCKS` blocks per thread
        is cut into a multiple of ``workers`` blocks of about equal size, so no thread idles in the
        last round (200,000 values made three full blocks and a small one for two threads).
        """
        # What stayed in memory: each batch ordered by itself (the read workers order the kernel's),
        # so a block is made of every batch's slice of its partitions.
        self._frames = [f if f.get_column("p").is_sorted() else f.sort("p", multithreaded=False) for f in self._frames]
        memory = [(f, self._partition_offsets(f)) for f in self._frames]
        counts = [0] * 256
        for offsets in [*self._offsets, *(o for _, o in memory)]:
            for k in range(256):
                counts[k] += offsets[k + 1] - offsets[k]
        total = sum(counts)
        share = 0.0  # cut where the running count passes each multiple of it
        if workers > 1 and 0 < total < BALANCED_BLOCKS * workers * COLUMNAR_BLOCK_ROWS:
            share = total / (workers * -(-total // (workers * COLUMNAR_BLOCK_ROWS)))
        start, rows, seen, cuts = 0, 0, 0, 1
        for k in range(256):
            due = share > 0 and seen >= cuts * share
            if k > start and (due or rows + counts[k] > COLUMNAR_BLOCK_ROWS):
                yield PARTITION_KEYS[start:k], self._block(start, k, memory)
                start, rows = k, 0
                cuts += 1 if due else 0
            rows += counts[k]
            seen += counts[k]
        yield PARTITION_KEYS[start:], self._block(start, 256, memory)
        self._cache.clear()

    def _block(self, first: int, end: int, memory: list[tuple[Any, list[int]]]) -> Any:
        """The values of partitions ``first`` to ``end - 1``."""
        pl = self._pl
        per = 256 // COLUMNAR_BUCKETS
        parts = []
        for b in range(first // per, (end - 1) // per + 1):
            for s, offsets in enumerate(self._offsets):
                piece = self._piece(s, b)
                base = offsets[b * per]
                lo = offsets[max(first, b * per)] - base
                hi = offsets[min(end, (b + 1) * per)] - base
                if hi > lo:
                    parts.append(piece.slice(lo, hi - lo))
        for s, b in [key for key in self._cache if key[1] < (end - 1) // per]:
            del self._cache[s, b]  # blocks go forward: earlier buckets are done
        for frame, offsets in memory:
            if offsets[end] > offsets[first]:
                parts.append(frame.slice(offsets[first], offsets[end] - offsets[first]))
        if not parts:
            return pl.DataFrame([pl.Series("p", [], dtype=pl.Int64), pl.Series("h", [], dtype=pl.String)])
        return pl.concat(parts)

    def _piece(self, segment: int, bucket: int) -> Any:
        """Bucket ``bucket`` of segment ``segment``, read once while blocks need it."""
        key = (segment, bucket)
        if key not in self._cache:
            offset, length = self._pieces[segment][bucket]
            fh = self._segments[segment]
            fh.seek(offset)
            self._cache[key] = self._pl.read_ipc_stream(fh.read(length))
        return self._cache[key]

    def close(self) -> None:
        """Close the segment files (the directory is removed by the owner)."""
        self._cache.clear()
        for fh in self._segments:
            fh.close()
        self._segments = []
        if self._text is not None:
            self._text.close()


class CountingIterator:
    """Wrap an iterator and count what passed through."""

    def __init__(self, it: Iterable[str]) -> None:
        self._it = iter(it)
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        for v in self._it:
            self.count += 1
            yield v


def external_sorted_unique(values: Iterable[str], directory: Path, run_items: int = DEFAULT_RUN_ITEMS) -> Iterator[str]:
    """Sort and de-duplicate values of any size with bounded memory.

    Values are cut into runs of ``run_items``, each sorted in memory and written to a run file;
    the runs are then merged with a heap, dropping repeats.
    """
    run_paths: list[Path] = []
    it = iter(values)
    try:
        while True:
            run = list(itertools.islice(it, run_items))
            if not run:
                break
            run = sorted(set(run))
            path = directory / f"run-{os.getpid()}-{id(run_paths)}-{len(run_paths)}.txt"
            with open(path, "w", encoding="utf-8", errors="surrogatepass", newline="\n") as fh:
                fh.write("\n".join(run))
                fh.write("\n")
            run_paths.append(path)
        handles = [open(p, encoding="utf-8", errors="surrogatepass", newline="\n") for p in run_paths]  # noqa: SIM115
        try:
            streams = [(line[:-1] for line in fh) for fh in handles]
            previous: str | None = None
            for v in heapq.merge(*streams):
                if v != previous:
                    yield v
                    previous = v
        finally:
            for fh in handles:
                fh.close()
    finally:
        for p in run_paths:
            p.unlink(missing_ok=True)


def merge_diff(new_sorted: Iterable[str], old_sorted: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Streaming diff of two sorted, duplicate-free sequences.

    Yields ``(+1, v)`` for values only in ``new_sorted`` (additions), ``(-1, v)`` for values only
    in ``old_sorted`` (removals) and ``(0, v)`` for values in both, in sorted order.
    """
    sentinel = object()
    new_it, old_it = iter(new_sorted), iter(old_sorted)
    a = next(new_it, sentinel)
    b = next(old_it, sentinel)
    while a is not sentinel and b is not sentinel:
        if a < b:  # type: ignore[operator]
            yield 1, a  # type: ignore[misc]
            a = next(new_it, sentinel)
        elif b < a:  # type: ignore[operator]
            yield -1, b  # type: ignore[misc]
            b = next(old_it, sentinel)
        else:
            yield 0, a  # type: ignore[misc]
            a = next(new_it, sentinel)
            b = next(old_it, sentinel)
    while a is not sentinel:
        yield 1, a  # type: ignore[misc]
        a = next(new_it, sentinel)
    while b is not sentinel:
        yield -1, b  # type: ignore[misc]
        b = next(old_it, sentinel)
