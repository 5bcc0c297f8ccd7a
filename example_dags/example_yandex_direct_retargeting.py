"""Put a freshly processed Yandex.Audience segment to work in Yandex Direct.

1. The DAG is scheduled on the Yandex.Audience segment Assets (alias ``yandex-audience-segments``),
   which the Audience column records when a segment is ``processed``. ``pick_segment`` reads the
   segment id from the triggering Asset event (``yandex-audience://<login>/segment/<id>``); a run
   started by hand takes it from the ``segment_id`` param instead (its default suits the sandbox).
2. ``upsert_retargeting_list`` keeps one retargeting list per segment: people in the segment
   (``ANY``) who are not converted customers (``NONE`` of the purchase goal in the last 90 days).
   The segment id is resolved to its Direct goal id through ``GetRetargetingGoals``; a rerun finds
   the list by name and writes nothing when nothing changed.
3. ``attach_to_ad_groups`` adds the list as an audience target to the ad groups, once per group.

Direct allows 5 concurrent requests per advertiser: give Direct tasks an Airflow pool with at most
4 slots per advertiser when several DAGs share one. Run it offline against the sandbox: ``make demo``.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetAlias, Param, task

from airflow_audience_provider.operators.yandex_direct import (
    YandexDirectAddAudienceTargetsOperator,
    YandexDirectCreateOrUpdateRetargetingListOperator,
)

with DAG(
    dag_id="example_yandex_direct_retargeting",
    description="Retargeting list from a processed Yandex.Audience segment minus buyers, attached to ad groups",
    # [START howto_asset_yandex_direct_schedule]
    schedule=[AssetAlias(name="yandex-audience-segments")],
    # [END howto_asset_yandex_direct_schedule]
    start_date=datetime(2026, 1, 1),
    catchup=False,
    params={
        # For runs started by hand. 1001 is a processed segment of the Direct sandbox fake (make demo).
        "segment_id": Param(1001, type=["null", "integer", "string"], description="Audience segment id"),
        "converted_goal_id": Param(12345678, type="integer", description="Metrica goal reached by buyers"),
        "ad_group_ids": Param([5757000001, 5757000002], type="array", description="Ad groups to target"),
    },
    default_args={"retries": 2, "retry_delay": timedelta(minutes=10)},
    tags=["example", "yandex_direct", "yandex_audience", "audience"],
) as dag:

    @task
    def pick_segment(**context) -> int:
        """The processed segment: from the triggering Asset event, else from the ``segment_id`` param."""
        for uri in context.get("triggering_asset_events") or {}:
            text = str(getattr(uri, "uri", uri))
            if text.startswith("yandex-audience://"):
                return int(text.rstrip("/").rsplit("/", 1)[-1])
        segment_id = context["params"].get("segment_id")
        if segment_id in (None, ""):
            raise ValueError("No Yandex.Audience segment: not triggered by its Asset and no segment_id param")
        return int(segment_id)

    segment = pick_segment()

    # [START howto_operator_yandex_direct_retargeting_list]
    upsert = YandexDirectCreateOrUpdateRetargetingListOperator(
        task_id="upsert_retargeting_list",
        name="airflow: audience segment {{ ti.xcom_pull(task_ids='pick_segment') }} minus buyers",
        rules=[
            {"operator": "ANY", "segments": ["{{ ti.xcom_pull(task_ids='pick_segment') }}"]},
            {"operator": "NONE", "goals": [{"goal_id": "{{ params.converted_goal_id }}", "membership_life_span": 90}]},
        ],
        description="Managed by Airflow ({{ dag.dag_id }}); edit the DAG, not the web interface",
    )
    # [END howto_operator_yandex_direct_retargeting_list]

    # [START howto_operator_yandex_direct_add_targets]
    attach = YandexDirectAddAudienceTargetsOperator(
        task_id="attach_to_ad_groups",
        retargeting_list_id="{{ ti.xcom_pull(task_ids='upsert_retargeting_list')['retargeting_list_id'] }}",
        ad_group_ids="{{ params.ad_group_ids }}",
        strategy_priority="HIGH",  # automatic strategies; manual ones take context_bid=<currency units>
        on_item_error="warn",  # one archived ad group must not block the others; outcomes are in XCom
    )
    # [END howto_operator_yandex_direct_add_targets]

    segment >> upsert >> attach
