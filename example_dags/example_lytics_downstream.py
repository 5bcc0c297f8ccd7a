"""Runs whenever a Lytics audience refresh announces its Asset (see example_lytics_segment_refresh)."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import DAG, AssetAlias, task

with DAG(
    dag_id="example_lytics_downstream",
    description="Scheduled on the Lytics segment Assets emitted by the refresh DAG",
    # [START howto_asset_lytics_downstream]
    schedule=[AssetAlias(name="lytics-segments")],
    # [END howto_asset_lytics_downstream]
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "lytics", "audience"],
) as dag:

    @task
    def use_refreshed_audience(**context) -> list[dict]:
        """Read which segments were refreshed, and their new sizes, from the triggering events."""
        refreshed = []
        for uri, events in (context.get("triggering_asset_events") or {}).items():
            for event in events:
                refreshed.append({"asset": str(uri), "extra": dict(event.extra or {})})
        print(f"Refreshed Lytics segments: {refreshed or 'none (started by hand)'}")
        return refreshed

    use_refreshed_audience()
