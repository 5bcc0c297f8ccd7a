"""Put a freshly processed Yandex.Audience segment to work in Yandex Direct.

1. The DAG is scheduled on the Yandex.Audience segment Assets (alias ``yandex-audience-segments``),
   which the Audience column records when a segment is ``processed``. ``segments_to_target`` reads
   the segment ids from the triggering Asset events (``yandex-audience://<login>/segment/<id>``; one
   run may bring several); a run started by hand takes the ``segment_id`` param instead (its
   default suits the sandbox).
2. ``upsert_retargeting_list`` (mapped per segment) keeps one retargeting list per segment: people in the segment
   (``ANY``) who are not converted customers (``NONE`` of the purchase goal in the last 90 days).
   The segment id is resolved to its Direct goal id through ``GetRetargetingGoals``; a rerun finds
   the list by name and writes nothing when nothing changed. Direct lists a segment only once it is
   processed **and** owned by or granted to the Direct login, and the Asset event comes when the
   segment is processed, before the Audience DAG's grant task: so the task first waits, in the
   triggerer, until Direct lists the segment (at most ``segment_wait_timeout``), and writes nothing
   before the grant exists.
3. ``attach_to_ad_groups`` (mapped per list) adds each list as an audience target to the ad groups,
   once per group.

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
    def segments_to_target(**context) -> list[int]:
        """Processed segments: one per triggering Asset event, else the ``segment_id`` param."""
        found = set()
        for asset in context.get("triggering_asset_events") or {}:  # keys: the Assets and the alias
            uri = str(getattr(asset, "uri", "") or "")
            if uri.startswith("yandex-audience://"):
                found.add(int(uri.rstrip("/").rsplit("/", 1)[-1]))
        if not found:
            segment_id = context["params"].get("segment_id")
            if segment_id in (None, ""):
                raise ValueError("No Yandex.Audience segment: not triggered by its Asset and no segment_id param")
            found.add(int(segment_id))
        return sorted(found)

    @task
    def list_definition(segment_id: int, **context) -> dict:
        """One retargeting list per segment: in the segment, and not a buyer in the last 90 days."""
        converted_goal = int(context["params"]["converted_goal_id"])
        return {
            "name": f"airflow: audience segment {segment_id} minus buyers",
            "rules": [
                {"operator": "ANY", "segments": [segment_id]},
                {"operator": "NONE", "goals": [{"goal_id": converted_goal, "membership_life_span": 90}]},
            ],
        }

    definitions = list_definition.expand(segment_id=segments_to_target())

    # [START howto_operator_yandex_direct_retargeting_list]
    upsert = YandexDirectCreateOrUpdateRetargetingListOperator.partial(
        task_id="upsert_retargeting_list",
        description="Managed by Airflow ({{ dag.dag_id }}); edit the DAG, not the web interface",
        # Wait (in the triggerer) until Direct lists the segment: the grant to the Direct login may
        # come after the Asset event. Give up after 6 hours, naming what Direct lists.
        deferrable=True,
        segment_wait_timeout=6 * 3600,
        poll_interval=600,
    ).expand_kwargs(definitions)  # name and rules per segment, e.g.
    # {"name": "...", "rules": [{"operator": "ANY", "segments": [segment_id]},
    #                           {"operator": "NONE", "goals": [{"goal_id": 12345678, "membership_life_span": 90}]}]}
    # [END howto_operator_yandex_direct_retargeting_list]

    # [START howto_operator_yandex_direct_add_targets]
    attach = YandexDirectAddAudienceTargetsOperator.partial(
        task_id="attach_to_ad_groups",
        ad_group_ids="{{ params.ad_group_ids }}",
        strategy_priority="HIGH",  # automatic strategies; manual ones take context_bid=<currency units>
        on_item_error="warn",  # one archived ad group must not block the others; outcomes are in XCom
    ).expand(retargeting_list_id=upsert.output.map(lambda result: result["retargeting_list_id"]))
    # [END howto_operator_yandex_direct_add_targets]
