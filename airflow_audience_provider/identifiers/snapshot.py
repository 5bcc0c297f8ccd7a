"""Snapshots of what was last sent to a destination, for incremental sync.

A snapshot is a text file: one header line, then one output value (hash) per line in the
engine's order (partition key, then value; for hashed rules that is plain sorted order)::

    #aap-snapshot {"format": 1, "rule": "criteo/email@1", "hashed": true, "count": 3, ...}
    0a1b...
    5f0c...
    e3b0...

It lives at ``<base>/<vendor>/<destination key>/snapshot.txt``. The base is a local path or any
``ObjectStoragePath`` URL; by default ``[audience] snapshot_base_path`` from the Airflow config or
``$AIRFLOW_HOME/audience_snapshots``.

Writes are atomic: locally a temporary file in the same directory is renamed over the old one;
on object storage the whole file is one object written in a single upload, which readers see
either complete or not at all. The engine commits a snapshot only after the destination accepted
every chunk, so a failed run never records identifiers that were not sent. Locally the new list
may be copied beside the old snapshot earlier (:meth:`SnapshotStore.prepare`, while the last
chunks are sent) under a blank first line, which the commit overwrites with the header padded
with spaces before the rename (a header longer than that line is written by a full copy).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import operator
import os
import re
import shutil
import time
import uuid
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from airflow_audience_provider.identifiers.errors import SnapshotError
from airflow_audience_provider.identifiers.hashing import PARTITION_KEYS
from airflow_audience_provider.identifiers.rules import VendorRule
from airflow_audience_provider.identifiers.state import sync_directory, write_back

log = logging.getLogger(__name__)

HEADER_PREFIX = "#aap-snapshot "
FORMAT_VERSION = 1
#: The header line of a prepared snapshot: spaces, then the header written over them at commit.
PREPARED_HEADER_BYTES = 512
#: :meth:`SnapshotStore.prepare` copies the list in steps of this many bytes, starting each step's
#: writeback once it is copied.
WRITE_BACK_STEP = 4 << 20
#: Steps of :data:`WRITE_BACK_STEP` under writeback at a time; the copy waits for the oldest beyond that.
WRITE_BACK_QUEUE = 4
_READ_BYTES = 1 << 20
#: Text the columnar reader splits at once (~64,000 digests).
_COLUMNAR_READ_BYTES = 4 << 20
_SAFE_KEY = re.compile(r"[A-Za-z0-9._-]{1,80}")


def default_snapshot_base() -> str:
    """``[audience] snapshot_base_path`` if configured, else ``$AIRFLOW_HOME/audience_snapshots``."""
    configured = os.environ.get("AIRFLOW__AUDIENCE__SNAPSHOT_BASE_PATH")
    if not configured:
        try:
            from airflow.configuration import conf  # lazy: importing Airflow is slow

            configured = conf.get("audience", "snapshot_base_path", fallback=None)
        except Exception:  # pragma: no cover - Airflow missing or misconfigured: use the default
            configured = None
    if configured:
        return configured
    home = os.environ.get("AIRFLOW_HOME") or os.path.join(os.path.expanduser("~"), "airflow")
    return os.path.join(home, "audience_snapshots")


def safe_key(text: str) -> str:
    """A path-safe form of a destination key; unsafe keys get a short digest to stay unique."""
    if _SAFE_KEY.fullmatch(text) and text not in (".", ".."):
        return text
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60].strip("._") or "key"
    return f"{cleaned}-{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def _is_remote(location: object) -> bool:
    """True for object-storage locations; local paths and ``file://`` use plain file I/O."""
    if isinstance(location, str):
        return "://" in location and not location.startswith("file://")
    if isinstance(location, Path) and not hasattr(location, "fs"):
        # On Airflow 3.1 an ObjectStoragePath is also a pathlib.Path; only fsspec-less paths are local.
        return False
    return getattr(location, "protocol", "") not in ("", "file", "local")


def rule_mismatch(meta: dict[str, Any], rule: VendorRule) -> str | None:
    """Why values recorded under ``meta`` (a snapshot or journal header) are not comparable with
    ``rule``'s, or None when they are.

    The rule key must match, and so must the rule's fingerprint (its settings): a rule
    re-registered under the same version with other settings does not match. A header without a
    fingerprint (written before they were recorded) matches only a rule this package ships.
    """
    if meta.get("rule") != rule.key:
        return f"was made with rule {meta.get('rule')}, this run uses {rule.key}"
    recorded = meta.get("rule_fingerprint")
    if recorded is None:
        if rule.shipped:
            return None
        return (
            f"records no settings fingerprint of rule {rule.key} (written by an older version), and that rule "
            "is not the one this package ships: whether its settings changed is unknown"
        )
    if recorded != rule.fingerprint:
        return (
            f"was made with other settings under the same key {rule.key} (fingerprint {recorded}, now "
            f"{rule.fingerprint}): the rule was re-registered without a new version"
        )
    return None


class SnapshotReader:
    """Reads a snapshot's values partition by partition, checking their order as it goes.

    :param fh: text stream positioned after the header line.
    :param hashed: values are hex digests (order = sorted order).
    :param origin: path for messages.
    :param expected_count: count from the header; a mismatch at the end means truncation.
    """

    def __init__(self, fh: IO[str], *, hashed: bool, origin: str, expected_count: int | None) -> None:
        self._fh = fh
        self._hashed = hashed
        self._origin = origin
        self._expected = expected_count
        self._buf: list[str] = []
        #: clear text: the partition key of each value of ``_buf``
        self._keys: list[str] = []
        self._pos = 0
        self._carry = ""
        self._eof = False
        self._last: tuple[str, str] | None = None
        self.count = 0

    @property
    def hashed(self) -> bool:
        """Whether the values are hex digests (their order is plain sorted order)."""
        return self._hashed

    @property
    def origin(self) -> str:
        """The snapshot's location, for messages."""
        return self._origin

    def read_text(self, size: int) -> str | None:
        """The next complete lines, read ``size`` characters at a time, without their last newline.

        At the end of the file, what follows the last newline; None once nothing is left. Blank
        lines come back as empty lines (an empty string mid-file is one blank line).
        """
        while not self._eof:
            data = self._fh.read(size)
            if not data:
                self._eof = True
                text, self._carry = self._carry, ""
                return text or None
            data = self._carry + data
            cut = data.rfind("\n")
            if cut < 0:
                self._carry = data
                continue
            text, self._carry = data[:cut], data[cut + 1 :]
            return text
        return None

    def _fill(self) -> bool:
        """Load the next block of lines; False at end of file."""
        text = self.read_text(_READ_BYTES)
        if text is None:
            return False
        lines = text.split("\n")
        self._check_order(lines)
        self._buf, self._pos = lines, 0
        self.count += len(lines)
        return True

    def _check_order(self, lines: list[str]) -> None:
        # Neighbours compared by C loops (map over operator.lt), no Python bytecode per value.
        if self._hashed:
            ordered = all(map(operator.lt, lines, itertools.islice(lines, 1, None)))
            first: tuple[str, str] = (lines[0][:2], lines[0])
            last: tuple[str, str] = (lines[-1][:2], lines[-1])
        else:
            # partition_of of every line, its CRC-32s taken by one map over the block's bytes
            data = "\n".join(lines).encode("utf-8", "surrogatepass").split(b"\n")
            self._keys = [PARTITION_KEYS[crc & 0xFF] for crc in map(zlib.crc32, data)]
            keyed = list(zip(self._keys, lines, strict=True))
            ordered = all(map(operator.lt, keyed, itertools.islice(keyed, 1, None)))
            first, last = keyed[0], keyed[-1]
        if not ordered or (self._last is not None and not self._last < first) or not all(lines):
            raise SnapshotError(
                f"snapshot {self._origin} is not in sorted order or has blank lines; delete it to force a full replace"
            )
        self._last = last

    def iter_partition(self, key: str) -> Iterator[str]:
        """Yield the values of one partition. Partitions must be asked for in key order."""
        while True:
            if self._pos >= len(self._buf) and not self._fill():
                return
            buf = self._buf
            if self._hashed:
                if buf[self._pos][:2] < key:
                    raise SnapshotError(f"snapshot {self._origin} has a value outside the partition order")
                end = bisect_left(buf, key + "\U0010ffff", self._pos)
                yield from buf[self._pos : end]
                self._pos = end
                if end < len(buf):
                    return
            else:
                # the keys of a checked block never decrease: the partition is one run of them
                keys = self._keys
                if keys[self._pos] < key:
                    raise SnapshotError(f"snapshot {self._origin} has a value outside the partition order")
                end = bisect_right(keys, key, self._pos)
                yield from buf[self._pos : end]
                self._pos = end
                if end < len(buf):
                    return

    def finish(self) -> int:
        """Check nothing is left over and the count matches the header; return the count."""
        if self._pos < len(self._buf) or self._fill():
            raise SnapshotError(f"snapshot {self._origin} has values that belong to no partition")
        if self._expected is not None and self._expected != self.count:
            raise SnapshotError(
                f"snapshot {self._origin} is truncated: header says {self._expected} values, found {self.count}"
            )
        return self.count


class ColumnarSnapshotReader:
    """A hashed snapshot's values as polars String Series, block of partitions by block, with the
    checks of :class:`SnapshotReader` (strictly increasing, no blank line, every value in a
    partition asked for, the header's count).

    It takes over ``reader``'s stream, which must not have been read from. Text is read in blocks
    of 4 MiB and split into values by polars, so no Python string is made
    per value.

    :param pl: the polars module.
    """

    def __init__(self, pl: Any, reader: SnapshotReader) -> None:
        if not reader.hashed or reader.count or reader._buf:
            raise ValueError("a columnar snapshot reader needs a hashed snapshot's unread stream")
        self._pl = pl
        self._reader = reader
        self._pending = pl.Series("h", [], dtype=pl.String)
        self._eof = False
        self._last: str | None = None

    @property
    def polars(self) -> Any:
        """The polars module."""
        return self._pl

    @property
    def count(self) -> int:
        """Values read so far."""
        return self._reader.count

    def _error(self, what: str) -> SnapshotError:
        return SnapshotError(f"snapshot {self._reader.origin} {what}")

    def _read(self) -> None:
        """Read, split and check the next block of values (append them to the pending ones)."""
        pl = self._pl
        text = self._reader.read_text(_COLUMNAR_READ_BYTES)
        if text is None:
            self._eof = True
            return
        try:
            values = pl.Series("h", [text], dtype=pl.String).str.split("\n").list.explode()
        except Exception:  # text polars cannot hold (a lone surrogate): no list of digests
            raise self._error("has a value outside the partition order") from None
        first = values[0]
        ordered = (values.slice(1) > values.slice(0, len(values) - 1)).all() and (
            self._last is None or self._last < first
        )
        if not ordered or not values.str.len_bytes().min():
            raise self._error("is not in sorted order or has blank lines; delete it to force a full replace")
        self._last = values[-1]
        self._reader.count += len(values)
        self._pending = pl.concat([self._pending, values]) if len(self._pending) else values

    def take(self, keys: tuple[str, ...]) -> Any:
        """The values of partitions ``keys`` (consecutive, asked for in key order) as a sorted String Series."""
        pl = self._pl
        end = PARTITION_KEYS[int(keys[-1], 16) + 1] if keys[-1] != PARTITION_KEYS[-1] else None
        while not self._eof and (end is None or not len(self._pending) or self._pending[-1] < end):
            self._read()
        pending = self._pending
        cut = len(pending) if end is None else pending.search_sorted(end, "left")
        values, self._pending = pending.slice(0, cut), pending.slice(cut)
        if len(values):
            # Each value lies between its partition's key and the key followed by the last character.
            edges = pl.Series([k for key in keys for k in (key, key + "\U0010ffff")], dtype=pl.String)
            bounds = values.search_sorted(edges, "left").to_list()
            if (
                bounds[0] != 0
                or bounds[-1] != cut
                or any(bounds[i] != bounds[i + 1] for i in range(1, len(bounds) - 1, 2))
            ):
                raise self._error("has a value outside the partition order")
        return values

    def finish(self) -> int:
        """:meth:`SnapshotReader.finish`: nothing left over, and the count the header says."""
        if len(self._pending):
            raise self._error("has values that belong to no partition")
        while not self._eof:
            self._read()
            if len(self._pending):
                raise self._error("has values that belong to no partition")
        return self._reader.finish()


def _copy_rest(src: IO[bytes], out: IO[bytes], *, write_back_step: int = 0) -> None:
    """Append the whole of ``src`` to ``out`` (both local, ``out`` flushed): in the kernel where it can.

    ``os.copy_file_range`` copies tens of MB without passing them through this process; where
    the platform or the file systems refuse, the bytes are copied by hand.

    :param write_back_step: copy in steps of this many bytes and start each step's writeback once
        it is copied, with at most :data:`WRITE_BACK_QUEUE` steps under way (0: copy in one go).
        The final ``fsync`` then finds little left, and the disk queue never holds the whole list
        at once, so a journal's small syncs meanwhile (each waits for the queue) stay short.
    """
    size = os.fstat(src.fileno()).st_size
    done = 0
    copy = getattr(os, "copy_file_range", None)
    if copy is not None:
        base = os.lseek(out.fileno(), 0, os.SEEK_CUR)
        step = write_back_step or size
        queued: list[tuple[int, int]] = []
        try:
            while done < size:
                start = done
                end = min(size, done + step)
                while done < end:
                    n = copy(src.fileno(), out.fileno(), end - done)
                    if n == 0:
                        break
                    done += n
                if write_back_step and done > start:
                    write_back(out.fileno(), base + start, done - start)
                    queued.append((base + start, done - start))
                    if len(queued) > WRITE_BACK_QUEUE:
                        write_back(out.fileno(), *queued.pop(0), wait=True)
                if done < end:
                    break
        except OSError:
            pass  # e.g. EXDEV on older kernels, ENOSYS, EINVAL: copy the rest by hand
    src.seek(done)
    out.seek(0, os.SEEK_END)
    shutil.copyfileobj(src, out, 1 << 20)
    out.flush()


class PreparedSnapshot:
    """A new snapshot's list already copied beside the snapshot and on disk, its header still blank.

    :meth:`SnapshotStore.commit` writes the header over the blank line and renames the file into
    place; :meth:`discard` removes it when the run does not commit.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    def discard(self) -> None:
        """Remove the copy (nothing happens if the commit already moved it into place)."""
        self.path.unlink(missing_ok=True)


class SnapshotStore:
    """Where one destination's snapshot lives.

    :param vendor: vendor key (first path level).
    :param destination_key: e.g. the segment id; made path-safe.
    :param base: local path, URL (``s3://bucket/prefix``) or ObjectStoragePath; None for the default.
    """

    FILE_NAME = "snapshot.txt"

    def __init__(self, vendor: str, destination_key: str, base: Any = None) -> None:
        self.vendor = vendor
        self.destination_key = destination_key
        self.base = base if base is not None else default_snapshot_base()
        self._remote = _is_remote(self.base)

    @property
    def location(self) -> Any:
        """The snapshot's full location (``Path`` locally, ``ObjectStoragePath`` otherwise)."""
        parts = (safe_key(self.vendor), safe_key(self.destination_key), self.FILE_NAME)
        if self._remote:
            base = self.base
            if isinstance(base, str):
                from airflow.sdk import ObjectStoragePath  # lazy: only for object storage

                base = ObjectStoragePath(base)
            return base.joinpath(*parts)
        base_str = str(self.base)
        if base_str.startswith("file://"):
            base_str = base_str[len("file://") :]
        return Path(base_str).joinpath(*parts)

    @property
    def directory(self) -> Any:
        """The destination's state directory (snapshot, journal and lease live here)."""
        return self.location.parent

    def invalidate(self) -> bool:
        """Delete the snapshot, so the next sync is a full replace. True if there was one."""
        loc = self.location
        if not loc.exists():
            return False
        loc.unlink()
        if not self._remote:
            # On disk before the untracked send that follows: a host crash must not bring it back.
            sync_directory(loc.parent)
        return True

    def describe(self) -> str:
        """The location as text (for XCom and logs)."""
        return str(self.location)

    def read_header(self) -> dict[str, Any] | None:
        """The header of the stored snapshot, or None if there is none."""
        loc = self.location
        if not loc.exists():
            return None
        with loc.open("r", encoding="utf-8") as fh:
            return self._parse_header(fh.readline())

    def _parse_header(self, line: str) -> dict[str, Any]:
        if not line.startswith(HEADER_PREFIX):
            raise SnapshotError(f"{self.describe()} is not a snapshot (no header); delete it to force a full replace")
        try:
            meta = json.loads(line[len(HEADER_PREFIX) :])
        except json.JSONDecodeError:
            raise SnapshotError(f"{self.describe()} has a corrupt header; delete it to force a full replace") from None
        if meta.get("format") != FORMAT_VERSION:
            raise SnapshotError(f"{self.describe()} has unknown snapshot format {meta.get('format')!r}")
        return dict(meta)

    def open(self, rule: VendorRule) -> tuple[SnapshotReader | None, dict[str, Any] | None, IO[str] | None]:
        """Open the snapshot for a diff.

        :returns: ``(reader, header, handle)``. ``reader`` is None when there is no snapshot or it
            was made with another rule version (then the header is still returned, so the caller
            can use its count for the removal guard). The caller closes ``handle``.
        """
        loc = self.location
        if not loc.exists():
            return None, None, None
        fh = loc.open("r", encoding="utf-8", errors="surrogatepass", newline="\n")
        try:
            meta = self._parse_header(fh.readline())
        except BaseException:
            fh.close()
            raise
        mismatch = rule_mismatch(meta, rule)
        if mismatch is not None:
            log.warning(
                "Snapshot %s %s: its values are not comparable, so this run is a full replace.",
                self.describe(),
                mismatch,
            )
            fh.close()
            return None, meta, None
        reader = SnapshotReader(
            fh, hashed=bool(meta.get("hashed")), origin=self.describe(), expected_count=meta.get("count")
        )
        return reader, meta, fh

    def prepare(self, data_path: Path) -> PreparedSnapshot | None:
        """Copy ``data_path`` beside the snapshot and flush it to disk, ahead of :meth:`commit`.

        Lets the copy of a large list run while its last chunks are still being sent; the commit
        then only writes the header and renames. The copy's writeback starts step by step as it is
        made (:data:`WRITE_BACK_STEP`). None on object storage (one upload at commit).
        """
        if self._remote:
            return None
        loc = self.location
        loc.parent.mkdir(parents=True, exist_ok=True)
        tmp = loc.with_name(f".{loc.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as out, open(data_path, "rb") as src:
                out.write(b" " * (PREPARED_HEADER_BYTES - 1) + b"\n")
                out.flush()
                _copy_rest(src, out, write_back_step=WRITE_BACK_STEP)
                os.fsync(out.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return PreparedSnapshot(tmp)

    def commit(
        self,
        data_path: Path,
        *,
        rule: VendorRule,
        count: int,
        extra: dict[str, Any] | None = None,
        prepared: PreparedSnapshot | None = None,
    ) -> None:
        """Store ``data_path`` (ordered values, one per line) as the new snapshot, atomically.

        :param extra: more header fields (e.g. ``full_replace_at``, the time of the last full replace).
        :param prepared: ``data_path`` already copied by :meth:`prepare`: only the header is written.
        """
        meta = {
            **(extra or {}),
            "format": FORMAT_VERSION,
            "rule": rule.key,
            "rule_fingerprint": rule.fingerprint,
            "vendor": rule.vendor,
            "identifier_type": rule.identifier_type.value,
            "hashed": rule.profile.hashed_output,
            "count": count,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        header = HEADER_PREFIX + json.dumps(meta, sort_keys=True) + "\n"
        loc = self.location
        if self._remote:
            # One object, one upload: readers never see a half-written snapshot.
            with loc.open("wb") as out, open(data_path, "rb") as src:
                out.write(header.encode())
                shutil.copyfileobj(src, out, 1 << 20)
            return
        self._remove_leftovers(keep=prepared.path if prepared is not None else None)
        line = header.encode()
        if prepared is not None and len(line) <= PREPARED_HEADER_BYTES:
            # JSON allows the spaces that pad the header to the blank line's size.
            try:
                with open(prepared.path, "r+b") as out:
                    out.write(line[:-1] + b" " * (PREPARED_HEADER_BYTES - len(line)) + b"\n")
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(prepared.path, loc)
            finally:
                prepared.discard()
            return
        if prepared is not None:
            prepared.discard()
        loc.parent.mkdir(parents=True, exist_ok=True)
        tmp = loc.with_name(f".{loc.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out, open(data_path, "rb") as src:
                out.write(header.encode())
                out.flush()
                _copy_rest(src, out)
                os.fsync(out.fileno())
            os.replace(tmp, loc)
        finally:
            tmp.unlink(missing_ok=True)

    def _remove_leftovers(self, keep: Path | None) -> None:
        """Delete copies of earlier runs that ended before their commit (killed while sending)."""
        loc = self.location
        for path in loc.parent.glob(f".{loc.name}.*.tmp"):
            if path != keep:
                path.unlink(missing_ok=True)

    def read_values(self) -> list[str]:
        """All values of the snapshot (tests and small lists only)."""
        loc = self.location
        if not loc.exists():
            return []
        with loc.open("r", encoding="utf-8") as fh:
            self._parse_header(fh.readline())
            return [line.rstrip("\n") for line in fh if line.strip()]
