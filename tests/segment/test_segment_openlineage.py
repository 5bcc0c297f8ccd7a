"""OpenLineage: the Segment operators that changed an audience report it as an output dataset.

Segment has no contact-list upload (Engage computes audience membership itself), so the data
changes covered are the audience definition, its enabled switch and its removal.
"""

from __future__ import annotations

import pytest

from airflow_audience_provider.operators.segment import (
    SegmentCreateOrUpdateAudienceOperator,
    SegmentDisableAudienceOperator,
    SegmentEnableAudienceOperator,
    SegmentRemoveAudienceOperator,
)

pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra is not installed")

QUERY = "event('Order Completed').within(30 days).count() >= 1"
WAIT = {"lock_poll_interval": 0.05, "lock_timeout": 10}


def outputs(op) -> list[tuple[str, str]]:
    lineage = op.get_openlineage_facets_on_complete(None)
    assert lineage.inputs == []
    return [(d.namespace, d.name) for d in lineage.outputs]


def upsert(**kwargs) -> SegmentCreateOrUpdateAudienceOperator:
    kwargs.setdefault("name", "OL buyers")
    return SegmentCreateOrUpdateAudienceOperator(task_id="upsert", definition=QUERY, emit_asset=False, **WAIT, **kwargs)


def test_create_and_update_report_the_audience_and_an_unchanged_rerun_reports_none(segment, context):
    created = upsert()
    audience_id = created.execute(context)["audience_id"]
    expected = [(f"segment://{segment.space_id}", f"audience/{audience_id}")]
    assert outputs(created) == expected

    updated = upsert(description="now with a description")
    assert updated.execute(context)["action"] == "updated"
    assert outputs(updated) == expected

    unchanged = upsert(description="now with a description")
    assert unchanged.execute(context)["action"] == "unchanged"
    assert outputs(unchanged) == []


def test_enable_and_disable_report_the_audience_only_when_they_switch_it(segment, context):
    audience_id = upsert().execute(context)["audience_id"]
    expected = [(f"segment://{segment.space_id}", f"audience/{audience_id}")]

    enable = SegmentEnableAudienceOperator(task_id="enable", audience_id=audience_id, **WAIT)
    assert enable.execute(context)["action"] == "enabled"
    assert outputs(enable) == expected

    again = SegmentEnableAudienceOperator(task_id="enable", audience_id=audience_id, **WAIT)
    assert again.execute(context)["action"] == "unchanged"
    assert outputs(again) == []

    disable = SegmentDisableAudienceOperator(task_id="disable", audience_id=audience_id, **WAIT)
    assert disable.execute(context)["action"] == "disabled"
    assert outputs(disable) == expected


def test_remove_reports_the_removed_audience(segment, context):
    audience_id = upsert().execute(context)["audience_id"]
    remove = SegmentRemoveAudienceOperator(task_id="rm", audience_id=audience_id)
    assert remove.execute(context)["removed"] is True
    assert outputs(remove) == [(f"segment://{segment.space_id}", f"audience/{audience_id}")]


def test_an_operator_that_changed_nothing_reports_no_outputs(segment, context):
    remove = SegmentRemoveAudienceOperator(task_id="rm", audience_name="no such audience")
    assert remove.execute(context)["removed"] is False
    assert outputs(remove) == []
