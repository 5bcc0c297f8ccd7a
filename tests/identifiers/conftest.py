"""Fixtures of the contact-list engine tests: an in-memory sender, a fresh kernel."""

from __future__ import annotations

import pytest

from airflow_audience_provider.identifiers import kernel
from airflow_audience_provider.identifiers.testing import RecordingSender


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
def fresh_kernel(monkeypatch: pytest.MonkeyPatch):
    """The compiled kernel as the environment leaves it by default: not switched off, loaded anew."""
    monkeypatch.delenv(kernel.KERNEL_ENV, raising=False)
    kernel.load_email_kernel.cache_clear()
    yield
    kernel.load_email_kernel.cache_clear()
