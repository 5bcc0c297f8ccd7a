"""Fixtures of the sandbox tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sandbox_helpers import LyticsApi


@pytest.fixture
def api(lytics_sandbox) -> Iterator[LyticsApi]:
    """A client for the (reset) Lytics fake."""
    client = LyticsApi(lytics_sandbox.base_url, lytics_sandbox.token)
    yield client
    client.session.close()
