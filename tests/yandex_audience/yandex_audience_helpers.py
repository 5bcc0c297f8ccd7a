"""Constants and helpers shared by the Yandex.Audience tests (a uniquely named module: a bare
``from conftest import`` can pick another directory's conftest)."""

from __future__ import annotations

from typing import Any

#: how long processing takes in the sandbox for these tests, and how often we look
PROCESSING = 0.2
POLL = 0.05


def upload_operator(snapshots: str, values: Any, default_name: str, **overrides: Any) -> Any:
    """A ``YandexAudienceUploadContactListOperator`` (task ``upload``, segment ``default_name`` unless
    ``overrides`` name another) that keeps its snapshots in ``snapshots``."""
    from airflow_audience_provider.operators.yandex_audience import YandexAudienceUploadContactListOperator

    kwargs = {"task_id": "upload", "segment_name": default_name, "source": values, "snapshot_base": snapshots}
    kwargs.update(overrides)
    return YandexAudienceUploadContactListOperator(**kwargs)


def emails(n: int, start: int = 0) -> list[str]:
    return [f"User{i}@Example.com" for i in range(start, start + n)]
