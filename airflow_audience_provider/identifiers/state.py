"""Small-file primitives for a destination's state directory, on local disk or object storage.

A destination's state lives in one directory, ``<base>/<vendor>/<destination key>/``, beside
each other on the same storage::

    snapshot.txt              what the destination held after the last complete run
    journal.json              the run in progress (or the one that did not finish)
    journal-ids-<run>.txt     identifiers that run may have touched, in send order
    lease/<token>.json        who may send to the destination now (one file per fencing token)

Guarantees by backend:

* **local paths** (``Path`` or ``file://``): writes go to a temporary file that is renamed over
  the target (atomic on POSIX); an exclusive create is ``os.link`` of a complete temporary file
  (fails if the target exists; atomic on local file systems and NFSv3+), so no reader ever sees
  a half-written file; with ``durable=True`` the file is fsynced before its rename or link and
  the directory after it, so a host crash cannot lose it (the lease's records use this);
* **object storage** (``ObjectStoragePath``): an object is written in one upload, so readers
  see it complete or not at all; an exclusive create is ``open(mode="xb")``, which fsspec
  backends implement with a conditional write where the store has one (local, memory, S3
  ``If-None-Match`` in recent s3fs). A backend without exclusive create is refused by
  :func:`create_exclusive` with a message naming it; it is never used unsafely.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_audience_provider.identifiers.errors import ContactListError


class StateFileError(ContactListError):
    """A state file (journal, lease) is corrupt, from a newer version, or cannot be written."""


def is_local(location: Any) -> bool:
    """True for plain local paths (``Path``), False for ``ObjectStoragePath`` locations."""
    return isinstance(location, Path) and not hasattr(location, "fs")


@contextlib.contextmanager
def _complete_temporary(location: Path, data: bytes, durable: bool = False) -> Iterator[Path]:
    """A temporary file beside ``location`` holding all of ``data`` (on disk when ``durable``); removed on leaving."""
    location.parent.mkdir(parents=True, exist_ok=True)
    tmp = location.with_name(f".{location.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
            if durable:
                out.flush()
                sync_data(out.fileno())
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(location: Any, data: bytes, *, durable: bool = False) -> None:
    """Replace ``location`` with ``data``: whole or not at all for any reader.

    ``durable`` (local paths): the data, then the rename, are on disk before this returns (a host
    crash leaves the new file, or the old one); object storage is durable per upload anyway.
    """
    if is_local(location):
        with _complete_temporary(location, data, durable) as tmp:
            os.replace(tmp, location)
        if durable:
            sync_directory(location.parent)
        return
    with location.open("wb") as out:
        out.write(data)


def create_exclusive(location: Any, data: bytes, *, durable: bool = False) -> bool:
    """Create ``location`` holding ``data`` only if it does not exist. True = we created it.

    ``durable`` (local paths): the file and its name are on disk before this returns True.
    """
    if is_local(location):
        with _complete_temporary(location, data, durable) as tmp:
            try:
                os.link(tmp, location)
            except FileExistsError:
                return False
        if durable:
            sync_directory(location.parent)
        return True
    with contextlib.suppress(Exception):
        location.parent.mkdir(parents=True, exist_ok=True)
    try:
        with location.open("xb") as out:
            out.write(data)
    except FileExistsError:
        return False
    except (ValueError, NotImplementedError, TypeError) as exc:
        raise StateFileError(
            f"{location}: this storage does not support exclusive create (mode 'xb'), which the "
            "destination lease needs; keep snapshot_base on local disk, S3 (s3fs with conditional "
            f"writes) or another store that supports it ({type(exc).__name__})"
        ) from exc
    return True


def read_bytes(location: Any) -> bytes | None:
    """The file's bytes, or None when it does not exist."""
    try:
        if is_local(location):
            return location.read_bytes()
        with location.open("rb") as fh:
            data: bytes = fh.read()
            return data
    except FileNotFoundError:
        return None


def delete(location: Any) -> None:
    """Remove the file if it exists."""
    with contextlib.suppress(FileNotFoundError):
        location.unlink()


def sync_data(fd: int) -> None:
    """Flush an open file's data to disk: ``fdatasync``, or ``fsync`` where there is none (macOS)."""
    getattr(os, "fdatasync", os.fsync)(fd)


#: ``sync_file_range`` flags (Linux): wait for writeback already under way, start it, wait for it.
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4
_sync_file_range: Any = None  # the libc function once looked up; False where there is none


def write_back(fd: int, offset: int, nbytes: int, *, wait: bool = False) -> bool:
    """Start writing a range of an open file to disk (Linux ``sync_file_range``); False where unavailable.

    Not a durability step (no metadata, no disk cache flush): it moves the writeback of bytes that
    are complete earlier, so a later ``fsync`` finds little left and a large writeback does not
    reach the disk queue in one burst. ``wait``: also wait until the range is written.
    """
    global _sync_file_range
    if _sync_file_range is None:
        _sync_file_range = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(Exception):
                import ctypes  # lazy: only a sync that writes large files needs it

                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
                fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
                fn.restype = ctypes.c_int
                _sync_file_range = fn
    if not _sync_file_range or nbytes <= 0:
        return False
    flags = _WAIT_BEFORE | _WRITE | _WAIT_AFTER if wait else _WRITE
    return bool(_sync_file_range(fd, offset, nbytes, flags) == 0)


def sync_directory(directory: Path) -> None:
    """Make the directory's entries (files created, renamed or removed in it) durable.

    A file system that cannot sync a directory (EINVAL, EBADF: some FUSE and network ones) is
    skipped, as PostgreSQL does: its entries are as durable as it makes them.
    """
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def list_names(directory: Any) -> list[str]:
    """File names in ``directory`` (empty when it does not exist)."""
    try:
        if is_local(directory):
            return sorted(p.name for p in directory.iterdir())
        if not directory.exists():
            return []
        return sorted(p.name for p in directory.iterdir())
    except FileNotFoundError:
        return []


def read_json(location: Any, *, what: str, fmt: int, fix: str) -> dict[str, Any] | None:
    """Read a small JSON state file; None when absent.

    :param what: what the file is, for messages (``"journal"``, ``"lease"``).
    :param fmt: the newest format this code understands.
    :param fix: what the user should do when the file is unusable.
    :raises StateFileError: corrupt, or written by a newer version.
    """
    data = read_bytes(location)
    if data is None:
        return None
    try:
        meta = json.loads(data.decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        raise StateFileError(f"the {what} file {location} is corrupt (not a JSON object); {fix}") from None
    version = meta.get("format")
    if not isinstance(version, int):
        raise StateFileError(f"the {what} file {location} has no format version; {fix}")
    if version > fmt:
        raise StateFileError(
            f"the {what} file {location} has format {version}, written by a newer version of "
            f"airflow-audience-provider (this one reads up to {fmt}); upgrade the provider on every "
            f"worker that writes this destination, or {fix}"
        )
    return meta


def dump_json(meta: dict[str, Any]) -> bytes:
    """``meta`` as the JSON bytes the state files hold (keys sorted)."""
    return json.dumps(meta, sort_keys=True).encode()


def default_owner() -> str:
    """Who this process is, for lease and journal files: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def utc_iso(ts: float) -> str:
    """Epoch seconds as an ISO 8601 UTC time to the second (``2026-12-08T02:30:00Z``)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
