"""Engine adapters: each vendor's :class:`~airflow_audience_provider.identifiers.sync.ChunkSender`,
which turns the contact-list engine's chunks into that vendor's hook calls."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_audience_provider.core.transport import Transport


def unsettled_until(transport: Transport, answered_at: float | None, settle_seconds: float | None = None) -> float:
    """``time.monotonic()`` until which a write of ``transport`` with an unknown outcome may still land.

    Those are the requests it gave up on (:meth:`~airflow_audience_provider.core.transport.Transport.unsettled_until`)
    and the writes answered with a 5xx: behind a gateway that gave up (504), the vendor may still
    apply them. ``answered_at``: when the last write that matters was so answered (None: none was;
    the transport's ``last_server_error`` is any write's). ``settle_seconds`` (default: the
    transport's, else three read timeouts) is how long after either they may land.
    """
    settle = settle_seconds if settle_seconds is not None else transport.settle_window()
    abandoned = transport.unsettled_until()
    if settle_seconds is not None and transport.last_unknown_outcome is not None:
        abandoned = transport.last_unknown_outcome + settle_seconds
    return max(abandoned, answered_at + settle if answered_at is not None else 0.0)
