"""Criteo's audience computation cycle: when does an upload reach live campaigns? (No I/O, cheap to import.)

Criteo computes audiences daily at 00:00 and 12:00 UTC and a change takes about 5 hours more to
reach live campaigns (Criteo's Retail Media audience docs; whether Marketing Solutions follows the
same windows is unverified). DAG authors use :func:`latest_safe_upload_time` to schedule uploads before
the cutoffs; the :class:`~airflow_audience_provider.sensors.criteo.CriteoAudienceLiveSensor` waits
for :func:`live_at`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from airflow_audience_provider.core.errors import AudienceValidationError

__all__ = [
    "COMPUTATION_HOURS_UTC",
    "PROPAGATION_DELAY",
    "latest_safe_upload_time",
    "live_at",
    "next_computation_window",
]

#: Hours (UTC) of the daily audience computations and the delay until changes are live (Retail Media docs).
COMPUTATION_HOURS_UTC: tuple[float, ...] = (0.0, 12.0)
PROPAGATION_DELAY = timedelta(hours=5)


def _as_utc(moment: datetime | str | float | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    if isinstance(moment, int | float):
        return datetime.fromtimestamp(float(moment), UTC)
    if isinstance(moment, str):
        text = moment.strip()
        if not text:
            raise AudienceValidationError("an empty time was given", vendor="criteo")
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise AudienceValidationError(f"{text!r} is not an ISO-8601 time", vendor="criteo") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def next_computation_window(
    after: datetime | str | float | None = None,
    *,
    hours_utc: Sequence[float] = COMPUTATION_HOURS_UTC,
    interval_seconds: float | None = None,
) -> datetime:
    """The first audience computation at or after ``after`` (default: now).

    :param hours_utc: hours of the day (UTC, fractions allowed) at which Criteo computes audiences;
        default 0 and 12.
    :param interval_seconds: instead of ``hours_utc``, a computation every this many seconds since
        the UNIX epoch (for tests and demos that need windows seconds apart).
    """
    moment = _as_utc(after)
    if interval_seconds is not None:
        if interval_seconds <= 0:
            raise AudienceValidationError("interval_seconds must be positive", vendor="criteo")
        stamp = moment.timestamp()
        return datetime.fromtimestamp(math.ceil(stamp / interval_seconds) * interval_seconds, UTC)
    hours = sorted({float(h) for h in hours_utc})
    if not hours or any(not 0 <= h < 24 for h in hours):
        raise AudienceValidationError(f"hours_utc must be hours in [0, 24), got {list(hours_utc)}", vendor="criteo")
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    for day in (0, 1):
        for hour in hours:
            candidate = midnight + timedelta(days=day, hours=hour)
            if candidate >= moment:
                return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def live_at(
    finished_at: datetime | str | float | None,
    *,
    hours_utc: Sequence[float] = COMPUTATION_HOURS_UTC,
    interval_seconds: float | None = None,
    propagation_delay: timedelta | float = PROPAGATION_DELAY,
) -> datetime:
    """When changes uploaded by ``finished_at`` reach live campaigns: next window + propagation delay."""
    delay = propagation_delay if isinstance(propagation_delay, timedelta) else timedelta(seconds=propagation_delay)
    return next_computation_window(finished_at, hours_utc=hours_utc, interval_seconds=interval_seconds) + delay


def latest_safe_upload_time(
    now: datetime | str | float | None = None,
    *,
    hours_utc: Sequence[float] = COMPUTATION_HOURS_UTC,
    interval_seconds: float | None = None,
    safety_margin: timedelta = timedelta(minutes=30),
) -> datetime:
    """The latest time an upload may finish to make the next computation window.

    The next window after ``now`` minus ``safety_margin``; when that moment has already passed, the
    cutoff of the window after. For example at 11:45 UTC with the default 30-minute margin the
    answer is 23:30 UTC (11:30 is gone; the 00:00 run is next).
    """
    moment = _as_utc(now)
    window = next_computation_window(moment, hours_utc=hours_utc, interval_seconds=interval_seconds)
    while window - safety_margin < moment:
        window = next_computation_window(
            window + timedelta(microseconds=1), hours_utc=hours_utc, interval_seconds=interval_seconds
        )
    return window - safety_margin
