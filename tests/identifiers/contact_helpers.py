"""Helpers shared by the contact-list engine tests (small data only)."""

from __future__ import annotations

import hashlib


def sha(value: str) -> str:
    """SHA-256 hex of a normalised value (what the engine should send)."""
    return hashlib.sha256(value.encode()).hexdigest()


def emails(n: int, start: int = 0) -> list[str]:
    """Valid e-mails in raw form: mixed case and surrounding blanks, as exported by CRMs."""
    return [f"  User{i}.Name@Example{i % 7}.COM " for i in range(start, start + n)]


def normalised_emails(n: int, start: int = 0) -> list[str]:
    """The normalised form of :func:`emails`."""
    return [f"user{i}.name@example{i % 7}.com" for i in range(start, start + n)]
