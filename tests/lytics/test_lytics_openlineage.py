"""OpenLineage: an operator that changed a segment reports it as an output dataset."""

from __future__ import annotations

import pytest

from airflow_audience_provider.operators.lytics import (
    LyticsCreateOrUpdateSegmentOperator,
    LyticsDeleteSegmentOperator,
)

pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra is not installed")


def test_upsert_reports_the_segment_as_an_output_dataset(lytics, context):
    op = LyticsCreateOrUpdateSegmentOperator(
        task_id="upsert",
        slug_name="ol_segment",
        name="OL segment",
        segment_ql="FILTER EXISTS email FROM user",
        emit_asset=False,  # lineage is reported whether or not Asset events are emitted
    )
    result = op.execute(context)

    lineage = op.get_openlineage_facets_on_complete(None)
    assert [(d.namespace, d.name) for d in lineage.outputs] == [
        (f"lytics://{lytics.account_id}", f"segment/{result['segment_id']}")
    ]
    assert lineage.inputs == []


def test_an_operator_that_changed_nothing_reports_no_outputs(lytics, context):
    op = LyticsDeleteSegmentOperator(task_id="delete", segments="no_such_segment")
    op.execute(context)
    assert op.get_openlineage_facets_on_complete(None).outputs == []


def test_delete_reports_the_deleted_segment(lytics, context):
    upsert = LyticsCreateOrUpdateSegmentOperator(
        task_id="upsert", slug_name="ol_doomed", name="Doomed", segment_ql="FILTER EXISTS email FROM user",
        emit_asset=False,
    )  # fmt: skip
    segment_id = upsert.execute(context)["segment_id"]
    op = LyticsDeleteSegmentOperator(task_id="delete", segments=["ol_doomed", "no_such_segment"])
    assert op.execute(context)["deleted"] == [segment_id]
    assert [(d.namespace, d.name) for d in op.get_openlineage_facets_on_complete(None).outputs] == [
        (f"lytics://{lytics.account_id}", f"segment/{segment_id}")
    ]
    assert context["outlet_events"].added == []  # lineage only: deletes emit no Asset events
