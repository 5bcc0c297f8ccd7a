"""The one result and event shape shared by every vendor.

* :class:`StatusMap` — a vendor's states as data: which mean done, failed, still working.
  Unknown states are reported verbatim and treated as still working until a deadline.
* :func:`make_event` / :func:`validate_event` — the trigger event every sensor and deferrable
  operator exchanges; ``execute_complete`` validates it so that triggerer/worker version skew
  or a malformed event fails loudly instead of passing as success.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from airflow_audience_provider.core.errors import (
    AudienceError,
    AudienceJobFailedError,
    AudienceTimeoutError,
)

EVENT_SCHEMA_VERSION = 1


class Phase(enum.StrEnum):
    """Where a vendor's asynchronous work stands, in our words."""

    DONE = "done"
    FAILED = "failed"
    RUNNING = "running"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class StatusMap:
    """A vendor's terminal-success, terminal-failure and in-progress states."""

    done: frozenset[str]
    failed: frozenset[str]
    running: frozenset[str]
    #: prefixes of failure states that carry a suffix (Lytics ``fault-3``).
    failed_prefixes: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        done: Iterable[str],
        failed: Iterable[str],
        running: Iterable[str],
        failed_prefixes: Iterable[str] = (),
    ) -> StatusMap:
        return cls(frozenset(done), frozenset(failed), frozenset(running), tuple(failed_prefixes))

    def phase(self, status: str | None) -> Phase:
        value = (status or "").strip().lower()
        if value in self.done:
            return Phase.DONE
        if value in self.failed or any(value.startswith(p) for p in self.failed_prefixes):
            return Phase.FAILED
        if value in self.running:
            return Phase.RUNNING
        return Phase.UNKNOWN

    def poll_result(
        self,
        status: str,
        data: dict[str, Any] | None,
        *,
        subject: str,
        done: str,
        failed: str,
        running: str | None = None,
        unknown: str | None = None,
    ) -> PollResult:
        """One look at vendor work in ``status``: its phase by this map and the message for that phase.

        :param subject: what is being waited for, for the default messages.
        :param running: default ``"<subject> is <status>"``.
        :param unknown: default ``"<subject> reports the unknown status '<status>'; still waiting"``.
        """
        phase = self.phase(status)
        messages = {
            Phase.DONE: done,
            Phase.FAILED: failed,
            Phase.RUNNING: running or f"{subject} is {status}",
            Phase.UNKNOWN: unknown or f"{subject} reports the unknown status {status!r}; still waiting",
        }
        return PollResult(phase, status, messages[phase], data)


class EventStatus(enum.StrEnum):
    """How a wait ended, as its trigger event reports it."""

    SUCCESS = "success"
    FAILED = "failed"  # the vendor's job failed
    ERROR = "error"  # we could not find out (API errors beyond the failure budget)
    TIMEOUT = "timeout"


def make_event(status: EventStatus | str, vendor: str, message: str, **fields: Any) -> dict[str, Any]:
    """A trigger event payload: plain JSON values only."""
    event = {
        "status": EventStatus(status).value,
        "vendor": vendor,
        "message": message,
        "schema": EVENT_SCHEMA_VERSION,
    }
    event.update(fields)
    return event


def validate_event(event: Any, vendor: str) -> dict[str, Any]:
    """Check a trigger event and turn failures into typed errors; return it on success.

    :raises AudienceError: for a missing or malformed event, or an unknown status.
    :raises AudienceJobFailedError: when the vendor's work failed.
    :raises AudienceTimeoutError: when the wait hit its deadline.
    """
    if not isinstance(event, dict) or "status" not in event:
        raise AudienceError(f"Received no valid {vendor} trigger event: {event!r}", vendor=vendor)
    try:
        status = EventStatus(event["status"])
    except ValueError:
        raise AudienceError(
            f"Received a {vendor} trigger event with unknown status {event['status']!r}", vendor=vendor
        ) from None
    if event.get("vendor") not in (None, vendor):
        raise AudienceError(f"Received an event for {event.get('vendor')!r}, expected {vendor!r}", vendor=vendor)
    message = str(event.get("message") or status.value)
    if status is EventStatus.FAILED:
        raise AudienceJobFailedError(message, vendor=vendor, code=event.get("vendor_status"))
    if status is EventStatus.TIMEOUT:
        raise AudienceTimeoutError(message, vendor=vendor)
    if status is EventStatus.ERROR:
        raise AudienceError(message, vendor=vendor, status=event.get("http_status"), code=event.get("code"))
    return event


@dataclass
class PollResult:
    """One look at a vendor's asynchronous work, shared by poke(), triggers and operator waits."""

    phase: Phase
    vendor_status: str
    message: str
    data: dict[str, Any] | None = None

    def describe(self) -> str:
        return f"{self.phase.value} (vendor status {self.vendor_status!r}): {self.message}"
