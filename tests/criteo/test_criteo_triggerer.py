"""The Criteo sensor started in Airflow's triggerer (``start_from_trigger``), through the triggerer's own code.

Airflow's ``TriggerRunner`` builds the trigger from a ``RunTrigger`` workload made the way the scheduler
makes it (from the serialised DAG's ``StartTriggerArgs``), builds the runtime task instance and its
template context, renders the templated fields and runs the trigger. Its requests go over a real comms
channel to a stand-in for the triggerer's supervisor that decodes them with the supervisor's own
message union and, like Airflow, never answers one it cannot decode.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from airflow_audience_provider.sensors.criteo import _TRIGGERER_RENDERS_TEMPLATES, CriteoAudienceLiveSensor

pytestmark = pytest.mark.skipif(
    not _TRIGGERER_RENDERS_TEMPLATES, reason="Airflow 3.3 is the first whose triggerer renders templates"
)

UPSTREAM = {"finished_at": "2026-01-01T00:00:00+00:00", "segment_id": "730011223344"}


class Supervisor:
    """The supervisor's end of the triggerer's comms channel, for XCom reads.

    Requests are validated with ``TriggerRunnerSupervisor.decoder`` (the message types the triggerer
    serves); one that does not validate is recorded and left unanswered, as Airflow does.
    ``GetXCom`` is answered from ``xcoms`` (``{(task_id, map_index): value}``), ``GetConnection``
    from the ``AIRFLOW_CONN_*`` environment variable the sandbox fixture set, anything else
    (``MaskSecret``) with an empty body.
    """

    def __init__(self, xcoms: dict[tuple[str, int], Any]) -> None:
        self.xcoms = xcoms
        self.served: list[str] = []
        self.refused: list[str] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        import msgspec
        from airflow.jobs.triggerer_job_runner import TriggerRunnerSupervisor
        from airflow.sdk.execution_time.comms import (
            ConnectionResult,
            GetConnection,
            GetXCom,
            XComResult,
            _RequestFrame,
            _ResponseFrame,
        )

        while True:
            length = int.from_bytes(await reader.readexactly(4), "big")
            frame = msgspec.msgpack.decode(await reader.readexactly(length), type=_RequestFrame)
            try:
                msg = TriggerRunnerSupervisor.decoder.validate_python(frame.body)
            except Exception:
                self.refused.append(str((frame.body or {}).get("type")))
                continue
            self.served.append(type(msg).__name__)
            if isinstance(msg, GetConnection):
                conn = _connection(msg.conn_id)
                body = ConnectionResult(
                    conn_id=msg.conn_id,
                    conn_type=conn.conn_type,
                    host=conn.host,
                    schema=conn.schema,
                    login=conn.login,
                    password=conn.password,
                    port=conn.port,
                    extra=conn.extra,
                ).model_dump(by_alias=True)
            elif isinstance(msg, GetXCom):
                value = self.xcoms.get((msg.task_id, msg.map_index))
                body = XComResult(key=msg.key, value=value).model_dump()
            else:  # MaskSecret: the supervisor answers with an empty body
                body = None
            writer.write(_ResponseFrame(id=frame.id, body=body).as_bytes())
            await writer.drain()


def _connection(conn_id: str) -> Any:
    from airflow.models.connection import Connection

    value = os.environ[f"AIRFLOW_CONN_{conn_id.upper()}"]
    return Connection.from_json(value, conn_id=conn_id) if value.startswith("{") else Connection(conn_id, uri=value)


def _dag(**sensor_kwargs: Any) -> Any:
    from airflow.sdk import DAG

    with DAG(dag_id="criteo_start_from_trigger", schedule=None) as dag:
        CriteoAudienceLiveSensor(
            task_id="live",
            interval_seconds=0.2,
            propagation_delay=0.1,
            poke_interval=0.05,
            timeout=60,
            **sensor_kwargs,
        )
    return dag


async def _run_in_triggerer(dag: Any, supervisor: Supervisor, monkeypatch: Any) -> dict[str, Any]:
    """The scheduler's and the triggerer's steps for one task that starts in the triggerer; the event."""
    from airflow.executors.workloads.task import TaskInstanceDTO
    from airflow.executors.workloads.trigger import RunTrigger
    from airflow.jobs.triggerer_job_runner import TriggerCommsDecoder, TriggerRunner
    from airflow.models.trigger import Trigger
    from airflow.sdk.execution_time import task_runner
    from airflow.serialization.serialized_objects import DagSerialization

    dag_data = DagSerialization.to_dict(dag)
    task = DagSerialization.from_dict(dag_data).get_task("live")  # the scheduler's view of the task
    assert task.start_from_trigger is True
    args = task.start_trigger_args
    now = datetime.now(UTC)
    workload = RunTrigger(
        id=1,
        classpath=args.trigger_cls,
        encrypted_kwargs=Trigger.encrypt_kwargs(args.trigger_kwargs or {}),
        ti=TaskInstanceDTO(
            id=uuid.uuid4(),
            task_id="live",
            dag_id=dag.dag_id,
            run_id="manual__1",
            try_number=1,
            dag_version_id=uuid.uuid4(),
            pool_slots=1,
            priority_weight=1,
        ),
        dag_data=dag_data,
        dag_run_data={
            "dag_id": dag.dag_id,
            "run_id": "manual__1",
            "logical_date": now,
            "data_interval_start": now,
            "data_interval_end": now,
            "run_after": now,
            "start_date": now,
            "end_date": None,
            "run_type": "manual",
            "state": "running",
            "consumed_asset_events": [],
            "partition_key": None,
        },
    )

    runner_sock, supervisor_sock = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=runner_sock)
    sup_reader, sup_writer = await asyncio.open_connection(sock=supervisor_sock)
    serving = asyncio.create_task(supervisor.serve(sup_reader, sup_writer))
    comms = TriggerCommsDecoder(socket=runner_sock, async_reader=reader, async_writer=writer)
    await comms.start_reader()
    monkeypatch.setattr(task_runner, "SUPERVISOR_COMMS", comms, raising=False)
    try:
        runner = TriggerRunner()
        runner.to_create.append(workload)
        await runner.create_triggers()
        await asyncio.wait_for(runner.triggers[1]["task"], timeout=30)
        assert not runner.failed_triggers
        return runner.events[0].event.payload
    finally:
        serving.cancel()
        writer.close()
        sup_writer.close()


def test_the_triggerer_renders_xcom_templates_and_the_sensor_goes_live(criteo, monkeypatch):
    supervisor = Supervisor({("sync_contact_list", -1): UPSTREAM})
    dag = _dag(
        uploaded_at="{{ ti.xcom_pull(task_ids='sync_contact_list')['finished_at'] }}",
        segment_id="{{ task_instance.xcom_pull(task_ids='sync_contact_list')['segment_id'] }}",
    )
    event = asyncio.run(_run_in_triggerer(dag, supervisor, monkeypatch))
    assert event["status"] == "success", event
    assert event["result"]["segment_id"] == UPSTREAM["segment_id"]
    assert event["result"]["uploaded_at"] == UPSTREAM["finished_at"]
    assert supervisor.served.count("GetXCom") == 2 and supervisor.refused == []


def test_a_template_the_triggerer_cannot_serve_fails_the_task_with_a_clear_message(criteo, monkeypatch):
    from airflow_audience_provider.core.errors import AudienceError
    from airflow_audience_provider.triggers.criteo import CriteoComputationWindowTrigger

    monkeypatch.setattr(CriteoComputationWindowTrigger, "render_timeout", 1.0)
    supervisor = Supervisor({})
    # the previous successful run's start: a request the triggerer's supervisor does not serve
    dag = _dag(uploaded_at="{{ prev_start_date_success }}")
    event = asyncio.run(_run_in_triggerer(dag, supervisor, monkeypatch))
    assert event["status"] == "error", event
    assert "uploaded_at" in event["message"] and "does not serve" in event["message"]
    assert supervisor.refused and supervisor.served == []
    # the task resumes on a worker in execute_complete, which fails with that message
    sensor = dag.get_task("live")
    with pytest.raises(AudienceError, match="does not serve"):
        sensor.execute_complete({}, event)


def test_a_template_that_fails_to_render_fails_the_task_with_the_reason(criteo, monkeypatch):
    supervisor = Supervisor({})  # the upstream pushed nothing
    dag = _dag(uploaded_at="{{ ti.xcom_pull(task_ids='sync_contact_list')['finished_at'].upper() }}")
    event = asyncio.run(_run_in_triggerer(dag, supervisor, monkeypatch))
    assert event["status"] == "error", event
    assert event["message"].startswith("Could not render the templated arguments (")
