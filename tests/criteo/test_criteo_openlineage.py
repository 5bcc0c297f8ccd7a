"""OpenLineage: the Criteo operators that changed a segment or an audience report it as an output dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_audience_provider.operators.criteo import (
    CriteoCreateOrUpdateAudienceOperator,
    CriteoCreateOrUpdateSegmentOperator,
    CriteoDeleteAudiencesOperator,
    CriteoDeleteSegmentsOperator,
    CriteoUploadContactListOperator,
)

pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra is not installed")

ACCOUNT = "criteo://424242"  # the sandbox connection's Retail Media account


def outputs(op) -> list[tuple[str, str]]:
    lineage = op.get_openlineage_facets_on_complete(None)
    assert lineage.inputs == []
    return [(d.namespace, d.name) for d in lineage.outputs]


def upsert_segment(context, name: str) -> tuple[CriteoCreateOrUpdateSegmentOperator, dict]:
    op = CriteoCreateOrUpdateSegmentOperator(task_id="upsert", name=name, retailer_id="311", emit_asset=False)
    return op, op.execute(context)


def test_segment_upsert_reports_the_segment(criteo, context):
    op, result = upsert_segment(context, "ol-buyers")
    assert result["action"] == "created"
    assert outputs(op) == [(ACCOUNT, f"segment/{result['segment_id']}")]


def test_contact_list_upload_reports_the_segment(criteo, context, tmp_path: Path):
    sid = upsert_segment(context, "ol-upload")[1]["segment_id"]
    source = tmp_path / "emails.csv"
    source.write_text("email\na@example.com\nb@example.com\n")
    op = CriteoUploadContactListOperator(
        task_id="upload",
        segment_id=sid,
        source={"path": str(source), "format": "csv", "column": "email"},
        mode="add",
    )
    assert op.execute(context)["sent"] == 2
    assert outputs(op) == [(ACCOUNT, f"segment/{sid}")]


def test_audience_upsert_reports_the_audience(criteo, context):
    sid = upsert_segment(context, "ol-audience-base")[1]["segment_id"]
    op = CriteoCreateOrUpdateAudienceOperator(
        task_id="aud", name="OL audience", algebra={"audienceSegmentId": sid}, retailer_id="311"
    )
    result = op.execute(context)
    assert outputs(op) == [(ACCOUNT, f"audience/{result['audience_id']}")]


def test_deletes_report_the_deleted_objects_only(criteo, context):
    sid = upsert_segment(context, "ol-doomed")[1]["segment_id"]
    aid = criteo.add_audience("ol-doomed-audience", {"audienceSegmentId": criteo.segments[0]["id"]})["id"]

    delete_audiences = CriteoDeleteAudiencesOperator(task_id="da", audience_ids=[aid, "999"])
    assert delete_audiences.execute(context)["missing"] == ["999"]
    assert outputs(delete_audiences) == [(ACCOUNT, f"audience/{aid}")]

    delete_segments = CriteoDeleteSegmentsOperator(task_id="ds", segment_ids=[sid, "1"])
    assert delete_segments.execute(context)["deleted"] == [sid]
    assert outputs(delete_segments) == [(ACCOUNT, f"segment/{sid}")]


def test_an_operator_that_changed_nothing_reports_no_outputs(criteo, context):
    op = CriteoDeleteSegmentsOperator(task_id="delete", segment_ids="1")
    assert op.execute(context)["missing"] == ["1"]
    assert outputs(op) == []
