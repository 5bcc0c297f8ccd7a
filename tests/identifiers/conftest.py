"""Fixtures of the contact-list engine tests: an in-memory sender."""

from __future__ import annotations

import pytest

from airflow_audience_provider.identifiers.testing import RecordingSender


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()
