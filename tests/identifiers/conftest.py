"""Fixtures of the contact-list engine tests: small data, temporary snapshot bases."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from airflow_audience_provider.identifiers.testing import RecordingSender


def sha(value: str) -> str:
    """SHA-256 hex of a normalised value (what the engine should send)."""
    return hashlib.sha256(value.encode()).hexdigest()


@pytest.fixture
def snapshot_base(tmp_path: Path) -> Path:
    base = tmp_path / "snapshots"
    base.mkdir()
    return base


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()


def emails(n: int, start: int = 0) -> list[str]:
    """Valid e-mails in raw form: mixed case and surrounding blanks, as exported by CRMs."""
    return [f"  User{i}.Name@Example{i % 7}.COM " for i in range(start, start + n)]


def normalised_emails(n: int, start: int = 0) -> list[str]:
    return [f"user{i}.name@example{i % 7}.com" for i in range(start, start + n)]
