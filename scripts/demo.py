"""`make demo`: run every example DAG end to end against the embedded sandbox.

Starts the fake vendor APIs on loopback, creates a throw-away Airflow home (SQLite) under
``.demo/``, runs each example DAG with ``airflow dags test`` (deferred tasks run their
triggers inline) and prints what each task did. Needs no network and no credentials.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / ".demo"

# Lines of `airflow dags test` that say where the run is.
_STARTING = re.compile(r"\[DAG TEST\] starting task_id=(\S+)")
_ENDED = re.compile(r"\[DAG TEST\] end task task_id=(\S+)")
_TRIGGER = re.compile(r"\[DAG TEST\] running trigger in line")


def example_dag_ids() -> list[str]:
    """Every example DAG (convention: dag_id == file name); downstream DAGs after the others."""
    ids = sorted(path.stem for path in (REPO / "example_dags").glob("example_*.py"))
    return sorted(ids, key=lambda dag_id: "downstream" in dag_id)


def step(number: int, total: int, text: str) -> None:
    print(f"\n[{number}/{total}] {text}", flush=True)


class Progress:
    """Prints one line per task as `airflow dags test` starts and ends it."""

    def __init__(self) -> None:
        self.started: dict[str, float] = {}
        self.current: str | None = None

    def __call__(self, line: str) -> None:
        if match := _STARTING.search(line):
            self.current = match.group(1)
            self.started.setdefault(self.current, time.monotonic())
            print(f"    ... {self.current} running", flush=True)
        elif match := _ENDED.search(line):
            task_id = match.group(1)
            took = time.monotonic() - self.started.get(task_id, time.monotonic())
            print(f"    ... {task_id} done ({took:.0f} s)", flush=True)
        elif _TRIGGER.search(line) and self.current:
            print(f"    ... {self.current} deferred: its trigger runs until the vendor is done", flush=True)


def _result_text(value: object) -> str:
    """The task's full result, indented under its line (never truncated)."""
    text = json.dumps(value, default=str, sort_keys=True, indent=2)
    return textwrap.indent(text, " " * 6)


def print_run(summary: dict, wall: float) -> None:
    run = summary["runs"][-1]
    tasks = run["tasks"]
    order = [t for t in summary.get("order", []) if t in tasks] + sorted(set(tasks) - set(summary.get("order", [])))
    print(f"  run {run['state']} in {wall:.0f} s; tasks in dependency order:")
    for task_id in order:
        task = tasks[task_id]
        result = task["xcom"].get("return_value")
        print(f"    {task_id} ({task['state']})")
        if result is not None:
            print(_result_text(result))
        if result in ([], {}) and summary.get("asset_scheduled"):
            print(
                "      (empty because `airflow dags test` starts this Asset-scheduled DAG by hand: there are no\n"
                "       triggering Asset events. Scheduled by Airflow after the upstream refresh, it lists them.)"
            )
        elif task["state"] == "skipped":
            print("      (skipped: an upstream step decided it should not run; see the DAG's docstring)")
    for event in summary.get("asset_events", []):
        print(f"    Asset event {event['uri']} from {event['task_id']}:")
        print(_result_text(event["extra"]))


def main() -> int:
    from airflow_audience_provider.sandbox.dagrun import dag_test_env, migrate_db, read_run, run_dag_test
    from airflow_audience_provider.sandbox.server import SandboxServer

    dag_ids = example_dag_ids()
    total = 3 + len(dag_ids)
    shutil.rmtree(DEMO, ignore_errors=True)
    (DEMO / "logs").mkdir(parents=True)
    failures: list[str] = []
    timings: list[tuple[str, str, float]] = []
    step(1, total, "Starting the sandbox: fake vendor APIs on loopback")
    with SandboxServer(processing_seconds=3) as sandbox:
        for vendor in sandbox.vendors:
            print(f"  {vendor:16s} {sandbox.url(vendor)}")
        env = dag_test_env(
            DEMO / "airflow_home",
            REPO / "example_dags",
            sandbox,
            AUDIENCE_EXAMPLE_POLL_SECONDS="1",
            AUDIENCE_EXAMPLE_BATCH_WAIT_SECONDS="5",
            AUDIENCE_EXAMPLE_SETTLE_SECONDS="3",
        )
        step(2, total, "Creating a throw-away Airflow home in .demo/airflow_home (airflow db migrate, ~10 s)")
        migrate_db(env)
        for number, dag_id in enumerate(dag_ids, start=3):
            step(number, total, f"airflow dags test {dag_id}")
            started = time.monotonic()
            outcome = run_dag_test(dag_id, env, timeout=600, on_line=Progress())
            wall = time.monotonic() - started
            log_path = DEMO / "logs" / f"{dag_id}.log"
            log_path.write_text(outcome.log)
            if not outcome.ok:
                failures.append(dag_id)
                timings.append((dag_id, "failed", wall))
                print(f"  FAILED (rc={outcome.returncode}) in {wall:.0f} s; the end of its log ({log_path}):")
                print(textwrap.indent("\n".join(outcome.log.splitlines()[-30:]), "    "))
                continue
            summary = read_run(env, dag_id)
            timings.append((dag_id, summary["runs"][-1]["state"], wall))
            print_run(summary, wall)
            print(f"  full log: {log_path.relative_to(REPO)}")
        step(total, total, "Summary")
        for dag_id, state, wall in timings:
            print(f"  {dag_id:42s} {state:8s} {wall:5.0f} s")
        print("  Requests the vendors received:")
        for vendor in sandbox.vendors:
            print(f"    {vendor:16s} {len(sandbox.fake(vendor).requests)}")
    if failures:
        print(f"\n{len(failures)} DAG(s) failed: {', '.join(failures)}")
        return 1
    print("\nDemo finished: all example DAGs succeeded.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
