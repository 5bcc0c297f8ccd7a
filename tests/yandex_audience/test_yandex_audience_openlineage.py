"""OpenLineage: the Yandex.Audience operators that changed a segment report it as an output dataset."""

from __future__ import annotations

import time

import pytest
from yandex_audience_helpers import PROCESSING, emails

from airflow_audience_provider.operators.yandex_audience import (
    YandexAudienceCreateMetrikaSegmentOperator,
    YandexAudienceDeleteSegmentOperator,
    YandexAudienceRenameSegmentOperator,
    YandexAudienceReprocessSegmentOperator,
    YandexAudienceUploadContactListOperator,
)

pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra is not installed")

NAMESPACE = "yandex-audience://sandbox-login"  # the sandbox connection's login


def outputs(op) -> list[tuple[str, str]]:
    lineage = op.get_openlineage_facets_on_complete(None)
    assert lineage.inputs == []
    return [(d.namespace, d.name) for d in lineage.outputs]


def upload(tmp_path, values) -> YandexAudienceUploadContactListOperator:
    return YandexAudienceUploadContactListOperator(
        task_id="upload",
        segment_name="ol crm buyers",
        source=values,
        snapshot_base=str(tmp_path / "snapshots"),
        emit_asset=False,  # lineage is reported whether or not Asset events are emitted
    )


def settle(fake, segment_id, timeout=5.0):
    deadline = time.monotonic() + timeout
    while fake.get_segment(segment_id)["status"] != "processed":
        assert time.monotonic() < deadline, fake.get_segment(segment_id)["status"]
        time.sleep(PROCESSING / 4)


def test_contact_list_upload_reports_the_segment_and_an_unchanged_rerun_reports_none(ya, hook, context, tmp_path):
    first = upload(tmp_path, emails(150))
    sid = first.execute(context)["segment_id"]
    assert outputs(first) == [(NAMESPACE, f"segment/{sid}")]

    settle(ya, sid)
    rerun = upload(tmp_path, emails(150))
    assert rerun.execute(context)["action"] == "unchanged"
    assert outputs(rerun) == []


def test_create_segment_reports_it_only_when_created(ya, hook, context):
    def create() -> YandexAudienceCreateMetrikaSegmentOperator:
        return YandexAudienceCreateMetrikaSegmentOperator(
            task_id="m", name="ol goal buyers", metrika_segment_type="goal_id", metrika_segment_id=77
        )

    created = create()
    sid = created.execute(context)["segment_id"]
    assert outputs(created) == [(NAMESPACE, f"segment/{sid}")]
    exists = create()
    assert exists.execute(context)["action"] == "exists"
    assert outputs(exists) == []


def test_rename_reprocess_and_delete_report_the_segment(ya, hook, context, tmp_path):
    sid = upload(tmp_path, emails(150)).execute(context)["segment_id"]
    expected = [(NAMESPACE, f"segment/{sid}")]

    rename = YandexAudienceRenameSegmentOperator(task_id="r", segment_id=str(sid), name="ol crm buyers v2")
    assert rename.execute(context)["action"] == "renamed"
    assert outputs(rename) == expected

    settle(ya, sid)
    reprocess = YandexAudienceReprocessSegmentOperator(task_id="rp", segment_id=sid)
    reprocess.execute(context)
    assert outputs(reprocess) == expected

    delete = YandexAudienceDeleteSegmentOperator(task_id="d", segment_ids=[sid])
    assert delete.execute(context)["deleted"] == [str(sid)]
    assert outputs(delete) == expected


def test_an_operator_that_changed_nothing_reports_no_outputs(ya, hook, context, tmp_path):
    sid = upload(tmp_path, emails(150)).execute(context)["segment_id"]
    same_name = YandexAudienceRenameSegmentOperator(task_id="r", segment_id=str(sid), name="ol crm buyers")
    assert same_name.execute(context)["action"] == "unchanged"
    assert outputs(same_name) == []

    gone = YandexAudienceDeleteSegmentOperator(task_id="d", segment_ids=[987654321])
    assert gone.execute(context)["missing"] == ["987654321"]
    assert outputs(gone) == []
