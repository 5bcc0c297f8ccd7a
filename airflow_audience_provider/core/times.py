"""Vendor timestamps read one way: ISO 8601 with ``Z`` or an offset; a time without a zone is UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def parse_time(value: Any) -> datetime | None:
    """``value`` as an aware datetime, or None when it is empty or not ISO 8601."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def epoch_seconds(value: Any) -> float | None:
    """``value`` (as :func:`parse_time` reads it) as seconds since the epoch, or None."""
    parsed = parse_time(value)
    return None if parsed is None else parsed.timestamp()
