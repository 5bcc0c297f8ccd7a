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

import heapq
import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

from airflow_audience_provider.identifiers.hashing import PARTITION_KEYS

DEFAULT_SPILL_BYTES = 32 << 20
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
