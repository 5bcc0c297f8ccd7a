"""The sync-model tests' targets: Criteo and Yandex.Audience over the sandbox, quiet before teardown."""

from pathlib import Path

import pytest
from sync_model_helpers import CriteoTarget, YandexTarget, wait_quiet


@pytest.fixture
def criteo(criteo_sandbox, tmp_path: Path):
    target = CriteoTarget(criteo_sandbox, tmp_path / "state")
    yield target
    wait_quiet(criteo_sandbox)
    target.close()


@pytest.fixture
def yandex(yandex_audience_sandbox, tmp_path: Path):
    target = YandexTarget(yandex_audience_sandbox, tmp_path / "state")
    yield target
    wait_quiet(yandex_audience_sandbox)
    target.close()
