"""An in-memory :class:`~airflow_audience_provider.identifiers.sync.ChunkSender` for tests.

It is a test double for the vendor-neutral engine only; vendor hooks are tested against the
project's HTTP sandbox. It keeps the list as a set, records every call (operation and size, never
the identifiers in its log) and can be told to fail, to test that a failed run does not advance
the snapshot.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from airflow_audience_provider.identifiers.chunking import Chunk
from airflow_audience_provider.identifiers.sync import ChunkResult

if TYPE_CHECKING:
    from airflow_audience_provider.identifiers.sync import ChunkSender


class SimulatedSendError(RuntimeError):
    """Raised by :class:`RecordingSender` when told to fail."""


@dataclass
class RecordingSender:
    """Keeps the destination list in memory.

    :param members: the list's current content (hashes).
    :param fail_on_call: 1-based call number (add/remove/replace/clear) that raises.
    :param fail_when: predicate on a chunk that makes the call raise.
    :param reject: predicate on an identifier the "vendor" counts as invalid (not stored).
    :param before_call: hook run at the start of every call (tests use it to hold calls open).
    """

    members: set[str] = field(default_factory=set)
    fail_on_call: int | None = None
    fail_when: Callable[[Chunk], bool] | None = None
    reject: Callable[[str], bool] | None = None
    before_call: Callable[[str], None] | None = None
    calls: list[tuple[str, int]] = field(default_factory=list)
    chunk_sizes: list[int] = field(default_factory=list)
    #: One chunk at a time unless the sync's options say otherwise.
    send_concurrency = 1
    #: No HTTP: nothing for the lease to guard.
    transport = None
    #: No remote list: the snapshot records the one the sync's options name, if any.
    remote_id = None

    def __post_init__(self) -> None:
        # Senders may be called from several threads (SyncOptions.send_concurrency).
        self._lock = threading.Lock()

    def unsettled_until(self) -> float:
        """Nothing is ever of unknown outcome in memory."""
        return 0.0

    def landing_window(self) -> float:
        """A call is applied before it returns."""
        return 0.0

    def _enter(self, op: str, chunk: Chunk | None) -> None:
        with self._lock:
            self.calls.append((op, len(chunk) if chunk is not None else 0))
            call_number = len(self.calls)
        if self.before_call is not None:
            self.before_call(op)
        if self.fail_on_call is not None and call_number == self.fail_on_call:
            raise SimulatedSendError(f"simulated failure on call {len(self.calls)} ({op})")
        if chunk is not None:
            if self.fail_when is not None and self.fail_when(chunk):
                raise SimulatedSendError(f"simulated failure on chunk {chunk.index} ({op})")
            self.chunk_sizes.append(len(chunk))

    def _split(self, chunk: Chunk) -> tuple[list[str], int]:
        if self.reject is None:
            return chunk.identifiers, 0
        good = [v for v in chunk.identifiers if not self.reject(v)]
        return good, len(chunk.identifiers) - len(good)

    def add(self, chunk: Chunk) -> ChunkResult:
        """Add identifiers."""
        self._enter("add", chunk)
        good, bad = self._split(chunk)
        with self._lock:
            self.members.update(good)
        return ChunkResult(len(good), bad)

    def remove(self, chunk: Chunk) -> ChunkResult:
        """Remove identifiers."""
        self._enter("remove", chunk)
        with self._lock:
            self.members.difference_update(chunk.identifiers)
        return ChunkResult(len(chunk.identifiers))

    def replace(self, chunk: Chunk) -> ChunkResult:
        """Make the list exactly this chunk."""
        self._enter("replace", chunk)
        good, bad = self._split(chunk)
        self.members = set(good)
        return ChunkResult(len(good), bad)

    def clear(self) -> None:
        """Empty the list."""
        self._enter("clear", None)
        self.members = set()

    @property
    def operations(self) -> list[str]:
        """Operation names in call order."""
        return [op for op, _ in self.calls]


if TYPE_CHECKING:

    def _is_chunk_sender(sender: RecordingSender) -> ChunkSender:
        return sender  # mypy: RecordingSender implements every member of the protocol
