"""OpenLineage: the Yandex Direct operators that changed a retargeting list report it as an output dataset.

Direct objects have no Asset scheme, so the lists are reported for lineage only, as
``yandex-direct://<client login>/retargeting-list/<id>``. Direct has no contact-list upload: its
audiences come from Yandex.Audience segments (see that vendor's lineage tests).
"""

from __future__ import annotations

import pytest

from airflow_audience_provider.operators.yandex_direct import (
    YandexDirectCreateOrUpdateRetargetingListOperator,
    YandexDirectDeleteRetargetingListsOperator,
)

pytest.importorskip("airflow.providers.openlineage", reason="the openlineage extra is not installed")

NAMESPACE = "yandex-direct://sandbox-advertiser"  # the sandbox connection's Client-Login
RULES = [{"operator": "ANY", "segments": [1001]}, {"operator": "NONE", "segments": ["Converted customers"]}]


def outputs(op) -> list[tuple[str, str]]:
    lineage = op.get_openlineage_facets_on_complete(None)
    assert lineage.inputs == []
    return [(d.namespace, d.name) for d in lineage.outputs]


def upsert(**kwargs) -> YandexDirectCreateOrUpdateRetargetingListOperator:
    kwargs.setdefault("rules", RULES)
    return YandexDirectCreateOrUpdateRetargetingListOperator(task_id="upsert", name="ol: buyers", **kwargs)


def test_create_and_update_report_the_list_and_an_unchanged_rerun_reports_none(direct, context):
    created = upsert()
    list_id = created.execute(context)["retargeting_list_id"]
    expected = [(NAMESPACE, f"retargeting-list/{list_id}")]
    assert outputs(created) == expected

    unchanged = upsert()
    assert unchanged.execute(context)["action"] == "unchanged"
    assert outputs(unchanged) == []

    updated = upsert(description="buyers who did not convert")
    assert updated.execute(context)["action"] == "updated"
    assert outputs(updated) == expected


def test_a_task_login_names_the_namespace(direct, context, set_direct_conn):
    conn = set_direct_conn("direct_no_login", extra={"client_login": None})
    op = upsert(yandex_direct_conn_id=conn, client_login="sandbox-advertiser")
    list_id = op.execute(context)["retargeting_list_id"]
    assert outputs(op) == [(NAMESPACE, f"retargeting-list/{list_id}")]


def test_delete_reports_the_deleted_lists_only(direct, context):
    list_id = upsert().execute(context)["retargeting_list_id"]
    delete = YandexDirectDeleteRetargetingListsOperator(task_id="delete", retargeting_list_ids=[list_id, 1])
    result = delete.execute(context)
    assert result["deleted"] == [list_id] and result["missing"] == [1]
    assert outputs(delete) == [(NAMESPACE, f"retargeting-list/{list_id}")]


def test_an_operator_that_changed_nothing_reports_no_outputs(direct, context):
    delete = YandexDirectDeleteRetargetingListsOperator(task_id="delete", names=["never existed"])
    assert delete.execute(context)["missing"] == ["never existed"]
    assert outputs(delete) == []
