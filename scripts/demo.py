"""`make demo`: run every example DAG end to end against the embedded sandbox.

Starts the fake vendor APIs on loopback, creates a throw-away Airflow home (SQLite) under
``.demo/``, runs each example DAG with ``airflow dags test`` (deferred tasks run their
triggers inline) and prints what each task did. Needs no network and no credentials.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"


def example_dag_ids() -> list[str]:
    """Every example DAG (convention: dag_id == file name); downstream DAGs after the others."""
    ids = sorted(path.stem for path in (REPO / "example_dags").glob("example_*.py"))
    return sorted(ids, key=lambda dag_id: "downstream" in dag_id)


def _short(value: object, width: int = 110) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= width else text[: width - 3] + "..."


def main() -> int:
    from airflow_audience_provider.sandbox.dagrun import dag_test_env, migrate_db, read_run, run_dag_test
    from airflow_audience_provider.sandbox.server import SandboxServer

    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "logs").mkdir(parents=True)
    failures = 0
    with SandboxServer(processing_seconds=3) as sandbox:
        print("Sandbox vendors on loopback:")
        for vendor in sandbox.vendors:
            print(f"  {vendor:16s} {sandbox.url(vendor)}")
        env = dag_test_env(
            DEMO / "airflow_home", REPO / "example_dags", sandbox, AUDIENCE_EXAMPLE_POLL_SECONDS="1"
        )
        print("Preparing a throw-away Airflow home (airflow db migrate) ...")
        migrate_db(env)
        for dag_id in example_dag_ids():
            started = time.monotonic()
            outcome = run_dag_test(dag_id, env, timeout=600)
            (DEMO / "logs" / f"{dag_id}.log").write_text(outcome.log)
            verdict = "OK" if outcome.ok else f"FAILED (rc={outcome.returncode})"
            print(f"\n== {dag_id}: {verdict} in {time.monotonic() - started:.0f} s (log: .demo/logs/{dag_id}.log)")
            if not outcome.ok:
                failures += 1
                print("\n".join(outcome.log.splitlines()[-30:]))
                continue
            summary = read_run(env, dag_id)
            run = summary["runs"][-1]
            for task_id, task in run["tasks"].items():
                result = task["xcom"].get("return_value")
                print(f"  {task_id:24s} {task['state']:8s} {_short(result) if result is not None else ''}")
            for event in summary.get("asset_events", []):
                print(f"  asset event  {event['uri']}  {_short(event['extra'], 80)}")
        print("\nRequests the vendors received:")
        for vendor in sandbox.vendors:
            print(f"  {vendor:16s} {len(sandbox.fake(vendor).requests)}")
    print("\nDemo finished: all example DAGs succeeded." if not failures else f"\n{failures} DAG(s) failed.")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
