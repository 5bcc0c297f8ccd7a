"""Run DAGs end to end against the sandbox with ``airflow dags test``, and read what they did.

Used by ``make demo`` and by the test suite, and useful for testing your own DAGs offline::

    with SandboxServer() as sandbox:
        env = dag_test_env(airflow_home, dags_folder, sandbox)
        migrate_db(env)
        outcome = run_dag_test("my_dag", env)
        print(outcome.ok, read_run(env, "my_dag"))

Reading the run needs the metadata DB of that ``AIRFLOW_HOME``; :func:`read_run` does it in a
subprocess (or, with ``in_process=True``, through an engine of its own on the home's SQLite file),
so the caller's own Airflow configuration is left alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_audience_provider.sandbox.server import SandboxServer

AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))


def dag_test_env(
    airflow_home: Path, dags_folder: Path, sandbox: SandboxServer | None = None, **extra: str
) -> dict[str, str]:
    """Environment for an isolated Airflow (SQLite) whose connections point at the sandbox."""
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(airflow_home),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(dags_folder),
        AIRFLOW__CORE__TEST_CONNECTION="Enabled",
    )
    if sandbox is not None:
        env.update(sandbox.env())
    env.update(extra)
    return env


def migrate_db(env: dict[str, str], timeout: float = 300, airflow_bin: str | None = None) -> None:
    """``airflow db migrate`` for the environment's AIRFLOW_HOME (a fresh SQLite DB).

    :param airflow_bin: the ``airflow`` executable to run (default: the one next to this Python),
        e.g. that of another virtual environment the provider was installed into.
    """
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [airflow_bin or AIRFLOW_BIN, "db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


@dataclass
class DagTestOutcome:
    """How one ``airflow dags test`` run ended: its return code and log."""

    dag_id: str
    returncode: int
    log: str

    @property
    def ok(self) -> bool:
        """Whether the run succeeded (return code 0)."""
        return self.returncode == 0


def run_dag_test(
    dag_id: str,
    env: dict[str, str],
    timeout: float = 600,
    conf: dict | None = None,
    airflow_bin: str | None = None,
    on_line: Callable[[str], None] | None = None,
) -> DagTestOutcome:
    """``airflow dags test <dag_id>``; deferred tasks run their triggers inline.

    Bounded by ``timeout`` because an inline trigger has no timeout of its own in Airflow.

    :param airflow_bin: the ``airflow`` executable to run (default: the one next to this Python).
    :param on_line: called with each line of output as it is printed (progress reporting).
    """
    command = [airflow_bin or AIRFLOW_BIN, "dags", "test", dag_id]
    if conf:
        command += ["--conf", json.dumps(conf)]
    lines: list[str] = []
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
    ) as process:
        assert process.stdout is not None

        def pump() -> None:
            for line in process.stdout:  # type: ignore[union-attr]
                lines.append(line)
                if on_line is not None:
                    on_line(line.rstrip("\n"))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            reader.join(timeout=5)
            return DagTestOutcome(dag_id, -1, "".join(lines) + f"\n[timed out after {timeout} s]")
        reader.join(timeout=30)
    return DagTestOutcome(dag_id, returncode, "".join(lines))


def collect_run(session: Any, dag_id: str) -> dict[str, Any]:
    """Task states, XComs and Asset events of every run of ``dag_id``, read through ``session``."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel

    out: dict[str, Any] = {"dag_id": dag_id, "runs": []}
    try:  # the tasks in dependency order, and whether the DAG is scheduled on Assets
        from airflow.models.serialized_dag import SerializedDagModel

        dag = SerializedDagModel.get_dag(dag_id, session=session)
        if dag is None:
            raise LookupError(f"{dag_id} is not serialised")
        upstream = {t.task_id: set(t.upstream_task_ids) for t in dag.tasks}
        order: list[str] = []
        done: set[str] = set()
        while len(order) < len(upstream):
            ready = sorted(t for t, ups in upstream.items() if t not in done and ups <= done)
            if not ready:
                break
            order += ready
            done.update(ready)
        out["order"] = order
        out["asset_scheduled"] = "Asset" in type(dag.timetable).__name__
        out["description"] = dag.description
    except Exception as exc:  # an unserialised DAG: keep the database order
        out["order_error"] = repr(exc)
    runs = session.query(DagRun).filter(DagRun.dag_id == dag_id).order_by(DagRun.id).all()
    for run in runs:
        tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id)
        tasks = {}
        for ti in tis:
            xcoms = {}
            for row in session.query(XComModel).filter(
                XComModel.dag_id == dag_id, XComModel.run_id == run.run_id, XComModel.task_id == ti.task_id
            ):
                value = row.value
                with contextlib.suppress(ValueError):
                    value = json.loads(value) if isinstance(value, (str, bytes)) else value
                xcoms[row.key] = value
            tasks[ti.task_id] = {"state": str(ti.state), "try_number": ti.try_number, "xcom": xcoms}
        out["runs"].append({"run_id": run.run_id, "state": str(run.state), "tasks": tasks})
    try:
        from airflow.models.asset import AssetEvent, AssetModel

        events = (
            session.query(AssetEvent, AssetModel)
            .join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .filter(AssetEvent.source_dag_id == dag_id)
        )
        out["asset_events"] = [
            {"uri": model.uri, "task_id": event.source_task_id, "extra": event.extra} for event, model in events
        ]
    except Exception as exc:  # the asset tables moved between Airflow versions
        out["asset_events_error"] = repr(exc)
    return out


_READER = r"""
import json, sys
from airflow.utils.session import create_session
from airflow_audience_provider.sandbox.dagrun import collect_run

with create_session() as session:
    out = collect_run(session, sys.argv[1])
print("AUDIENCE-RUN-JSON " + json.dumps(out, default=str))
"""


def read_run(env: dict[str, str], dag_id: str, in_process: bool = False) -> dict[str, Any]:
    """Task states, XComs and Asset events of every run of ``dag_id`` in that AIRFLOW_HOME.

    :param in_process: read the home's default SQLite DB (``$AIRFLOW_HOME/airflow.db``) in this
        process, through its own engine, instead of starting Python with ``env`` (some seconds of
        Airflow imports). For callers that import Airflow anyway, such as a test suite; an ``env``
        naming another database (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN``) is read the usual way.
    """
    database = Path(env["AIRFLOW_HOME"]) / "airflow.db"
    if in_process and "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in env and database.is_file():
        from sqlalchemy import create_engine
        from sqlalchemy.orm import Session
        from sqlalchemy.pool import NullPool

        engine = create_engine(f"sqlite:///{database}", poolclass=NullPool)
        try:
            with Session(engine) as session:
                out = collect_run(session, dag_id)
        finally:
            engine.dispose()
        return json.loads(json.dumps(out, default=str))  # the values the subprocess would print
    done = subprocess.run(
        [sys.executable, "-c", _READER, dag_id], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("AUDIENCE-RUN-JSON "):
            return json.loads(line.split(" ", 1)[1])
    raise RuntimeError(f"Could not read the runs of {dag_id}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
