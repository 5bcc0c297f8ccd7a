"""Helpers shared by the contact-list engine tests: small data, and the exact rule applied row by row."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

from airflow_audience_provider.identifiers.normalise import InvalidIdentifier

#: (the outputs; the invalid rows as (index, reason))
Outcome = tuple[list[str], list[tuple[int, str]]]


def sha(value: str) -> str:
    """SHA-256 hex of a normalised value (what the engine should send)."""
    return hashlib.sha256(value.encode()).hexdigest()


def emails(n: int, start: int = 0) -> list[str]:
    """Valid e-mails in raw form: mixed case and surrounding blanks, as exported by CRMs."""
    return [f"  User{i}.Name@Example{i % 7}.COM " for i in range(start, start + n)]


def normalised_emails(n: int, start: int = 0) -> list[str]:
    """The normalised form of :func:`emails`."""
    return [f"user{i}.name@example{i % 7}.com" for i in range(start, start + n)]


def exact_outcome(decide: Callable[[str], str], values: list[str], *, sort: bool = True) -> Outcome:
    """What the exact rule ``decide`` gives row by row: its outputs (sorted if ``sort``), invalid rows with reasons."""
    out, invalid = [], []
    for i, v in enumerate(values):
        try:
            out.append(decide(v))
        except InvalidIdentifier as exc:
            invalid.append((i, exc.reason))
    return (sorted(out) if sort else out), invalid


def break_lease_writes(monkeypatch: Any) -> threading.Event:
    """Make the lease's file writes fail while the returned event is set (the storage did not answer)."""
    from airflow_audience_provider.identifiers import lease as lease_module

    broken = threading.Event()
    real_write = lease_module.write_atomic

    def write(location: Any, data: bytes, **kw: Any) -> None:
        if broken.is_set():
            raise OSError("the storage did not answer")
        real_write(location, data, **kw)

    monkeypatch.setattr(lease_module, "write_atomic", write)
    return broken
