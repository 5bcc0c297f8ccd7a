"""The contact-list engine's sender for a Criteo contact-list segment: chunks to contact-list calls."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from airflow_audience_provider.core.errors import AudienceTransportError
from airflow_audience_provider.core.transport import JsonStrings, Transport
from airflow_audience_provider.identifiers.sync import ChunkResult
from airflow_audience_provider.operators.senders import unsettled_until

if TYPE_CHECKING:
    from airflow_audience_provider.hooks.criteo import CriteoHook

log = logging.getLogger(__name__)


class CriteoChunkSender:
    """:class:`~airflow_audience_provider.identifiers.sync.ChunkSender` for one Criteo contact-list segment.

    ``replace`` is clear then add (not atomic). The adds depend on the clear: a clear whose answer
    never came (read timeout, dropped connection), or came as a 5xx (a gateway that gave up while
    Criteo went on), may still be applied later and wipe them. So
    a clear counts as confirmed only when no attempt of it had an unknown outcome; otherwise the
    sender waits ``settle_seconds`` (for the abandoned request to land or die) and clears again,
    at most ``clear_attempts`` times, then fails the chunk.

    ``unsettled_until()`` tells the engine until when a request of unknown outcome may still land
    (the engine keeps the lease until then). ``on_chunk`` is called with each chunk's normalised
    answer (counts only), so the operator can report what Criteo accepted even when a later chunk
    fails; it runs on the thread that sent the chunk.

    Two chunks are in flight at once (``send_concurrency``; ``SyncOptions.send_concurrency``
    overrides it): Criteo allows 250 calls per minute per app, and the second request is encoded
    and uploaded while Criteo processes the first. Adds are idempotent and commute; the engine
    sends the replace alone, removals after every addition, and journals each chunk before its
    request.

    :param settle_seconds: how long an abandoned request may still be applied by Criteo
        (assumption; default: the transport's ``settle_seconds``, three read timeouts).
    :param clear_attempts: clears tried before a replace gives up.
    """

    #: Chunks in flight at once unless the sync's options say otherwise.
    send_concurrency = 2

    def __init__(
        self,
        hook: CriteoHook,
        segment_id: str,
        identifier_type: str | None = None,
        on_chunk: Callable[[str, dict[str, Any]], None] | None = None,
        *,
        settle_seconds: float | None = None,
        clear_attempts: int = 3,
    ) -> None:
        self.hook = hook
        self.segment_id = str(segment_id)
        self.identifier_type = identifier_type
        self.on_chunk = on_chunk
        self.cleared = False
        self.settle_seconds = settle_seconds
        self.clear_attempts = clear_attempts

    @property
    def remote_id(self) -> str | None:
        """None: the destination key is the segment id, which names the list (nothing to record)."""
        return None

    @property
    def transport(self) -> Transport:
        """The hook's transport: every request of this sender goes through it."""
        return self.hook.get_conn()

    def unsettled_until(self) -> float:
        """``time.monotonic()`` until which a request of this hook with unknown outcome may still land
        (one given up on, or a write answered with a 5xx)."""
        transport = self.hook.get_conn()  # its writes are this sender's add-remove and clear calls
        return unsettled_until(transport, transport.last_server_error, self.settle_seconds)

    def landing_window(self) -> float:
        """Seconds after it was sent that a request of this sender may still be applied by Criteo."""
        transport = self.hook.get_conn()
        if self.settle_seconds is None:
            return transport.landing_window()
        return float(transport.timeouts.read) + self.settle_seconds

    def _send(self, operation: str, chunk: Any) -> Any:
        # Hex digests: their JSON array is their text with quotes around each line (no list of strings).
        # A work file's bytes are read into the request body itself when the body is written.
        identifiers: Sequence[str]
        if not chunk.rule.profile.hashed_output:
            identifiers = chunk.identifiers
        elif chunk.path is not None:
            identifiers = JsonStrings.reading(chunk.nbytes, len(chunk), chunk.read_lines_into)
        else:
            hex_lines = JsonStrings.from_lines(chunk.lines_bytes(), len(chunk))
            identifiers = hex_lines if hex_lines is not None else chunk.identifiers
        answer = self.hook.add_remove_contact_list_by_audience_segment(
            self.segment_id, operation, identifiers, self.identifier_type or chunk.vendor_identifier_type
        )
        if self.on_chunk is not None:
            self.on_chunk(operation, answer)
        return ChunkResult(
            accepted=answer["valid"],
            rejected=answer["invalid"],
            detail={"contact_list_id": answer["contact_list_id"], "request_date": answer["request_date"]},
        )

    def add(self, chunk: Any) -> Any:
        return self._send("add", chunk)

    def remove(self, chunk: Any) -> Any:
        return self._send("remove", chunk)

    def replace(self, chunk: Any) -> Any:
        self.clear()
        return self._send("add", chunk)

    def clear(self) -> None:
        """Clear, and confirm it: no attempt of the clear that succeeded had an unknown outcome."""
        transport = self.hook.get_conn()
        for attempt in range(1, self.clear_attempts + 1):
            wait = self.unsettled_until() - time.monotonic()
            if wait > 0:
                log.warning("Waiting %.1f s for an unanswered Criteo request to settle before clearing", wait)
                time.sleep(wait)
            before = (transport.last_unknown_outcome, transport.last_server_error)
            self.hook.clear_contact_list_by_audience_segment(self.segment_id)
            if (transport.last_unknown_outcome, transport.last_server_error) == before:
                self.cleared = True
                return
            log.warning(
                "A clear of Criteo segment %s went unanswered before it succeeded (attempt %d of %d): the "
                "unanswered one may still land, so the list is cleared again after it settles",
                self.segment_id,
                attempt,
                self.clear_attempts,
            )
        raise AudienceTransportError(
            f"could not confirm the clear of Criteo segment {self.segment_id}: every attempt had a request of "
            "unknown outcome; nothing was added after it",
            vendor="criteo",
        )
