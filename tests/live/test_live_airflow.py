"""Every example DAG on a running Airflow: api-server, scheduler, dag-processor and triggerer as
separate processes (LocalExecutor, parallelism 4) in a throw-away ``AIRFLOW_HOME`` with a private
PostgreSQL cluster as the metadata DB, the vendors served by the sandbox in this process.

Each DAG is triggered through the REST API (JWT from ``/auth/token``); the runs are then checked
from the REST API, the metadata DB and the log files the deployment wrote:

- every run succeeds with the task states and XComs its example promises;
- every deferrable task really deferred: the task instance was seen ``deferred`` with a trigger row,
  and the triggerer wrote a trigger log ending in ``Trigger fired event``; a ``start_from_trigger``
  task was never queued or running before its trigger fired;
- one sensor waits in ``reschedule`` mode (``up_for_reschedule``, ``task_reschedule`` rows) and one
  in ``poke`` mode (several checks in one run of the task);
- the reviewed sync's human-in-the-loop approval: approved through the REST API, the difference is
  sent; rejected, nothing reaches the vendor (the sandbox's request log);
- the triggerer never warns about a blocked event loop; no secret and no clear-text identifier
  appears in any log file.

With ``AUDIENCE_LIVE_EXECUTOR=celery`` (``make test-live-celery``) the same runs go through the
CeleryExecutor: a private ``redis-server`` on a loopback port is the broker, the result backend and
the rate limiter's shared budget; two ``airflow celery worker`` processes, each with its own
``AIRFLOW_HOME``, share only the metadata DB, the configuration and one directory for snapshots,
journals, leases and the examples' exports. Then also:

- tasks ran on both workers (the task instances' ``hostname``);
- the busiest one-window request count per vendor account, over both workers, stayed within the
  vendor's documented limit (the sandbox's ``/_sandbox/rates``);
- a contact-list sync whose snapshot base is a local path warns loudly that it may be host-local.

Opt-in (it starts a whole deployment): ``make test-live`` sets ``AUDIENCE_LIVE_TESTS=1``.
``AUDIENCE_LIVE_HOME`` keeps the deployment's home (logs, DB) in a directory of your choice.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from airflow import __version__ as airflow_version
from live_deployment import RESULTS, Api, LiveAirflow, PostgresServer, RedisServer, RunRow

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        os.environ.get("AUDIENCE_LIVE_TESTS") != "1",
        reason="live test: starts a whole Airflow deployment; run it with `make test-live` (AUDIENCE_LIVE_TESTS=1)",
    ),
]

LYTICS = "example_lytics_segment_refresh"
LYTICS_DOWNSTREAM = "example_lytics_downstream"
SEGMENT = "example_segment_audience_rollout"
CRM = "example_yandex_audience_crm_refresh"
REVIEWED = "example_yandex_audience_reviewed_sync"
DIRECT = "example_yandex_direct_retargeting"
CRITEO = "example_criteo_contact_list_sync"
ALL_DAGS = [CRITEO, LYTICS_DOWNSTREAM, LYTICS, SEGMENT, CRM, REVIEWED, DIRECT]

CELERY = os.environ.get("AUDIENCE_LIVE_EXECUTOR", "local").lower() == "celery"
#: Airflow 3.3+ renders templates in the triggerer, so the Criteo sensor starts there (start_from_trigger).
TRIGGERER_RENDERS_TEMPLATES = tuple(int(p) for p in airflow_version.split(".")[:2]) >= (3, 3)
CELERY_WORKERS = ("worker-a", "worker-b")
celery_only = pytest.mark.skipif(not CELERY, reason="CeleryExecutor only (make test-live-celery)")
# The vendors' documented limits our rate limiter enforces, as (requests, window seconds) per account.
DOCUMENTED_LIMITS = {
    "yandex_audience": (30, 1.0),  # 30 requests per second per IP
    "criteo": (250, 60.0),  # 250 calls per minute per app
}
#: Arrival times at the sandbox differ from the clients' send times by the loopback latency; the
#: peak is measured over a window this much shorter than the limit's.
LATENCY_ALLOWANCE = 0.2
SHARED_STATE_WARNING = "on this host only, but the executor is CeleryExecutor"

RUN_TIMEOUT = float(os.environ.get("AUDIENCE_LIVE_RUN_TIMEOUT", "300"))
# Every run of every chain ends by then (timed-out runs are set to failed); make test-live's
# pytest --timeout (1200 s) leaves room for start-up and shutdown on top.
SCENARIO_TIMEOUT = float(os.environ.get("AUDIENCE_LIVE_SCENARIO_TIMEOUT", "720"))
CRITEO_TIMEOUT = float(os.environ.get("AUDIENCE_LIVE_CRITEO_TIMEOUT", "150"))
HITL_TIMEOUT = 180.0
ANSWER_DELAY = 90.0
# How long asynchronous vendor work takes in the sandbox: long enough that every sensor's first
# look finds the work unfinished, so deferral, rescheduling and poking really happen.
PROCESSING_SECONDS = 25.0


# True runs the Criteo DAG alone, after the others. A request the triggerer's supervisor refuses
# (as Criteo's templates once caused) leaves it unable to deliver any later trigger event, so
# every other deferred task would hang too.
ISOLATE_CRITEO = os.environ.get("AUDIENCE_LIVE_ISOLATE_CRITEO") == "1"

# Which tasks must go through the triggerer in each example, given the sandbox's processing time.
EXPECTED_DEFERRED = {
    LYTICS: {"wait_for_reevaluation"},
    SEGMENT: {"preview_size", "wait_until_computed"},
    CRM: {"wait_for_processing"},
    CRITEO: {"wait_until_live"},
}
TRIGGER_FIRED = "Trigger fired event"
BLOCKED_LOOP = re.compile(r"async thread was blocked for ([0-9.]+) seconds")
# asyncio debug mode (PYTHONASYNCIODEBUG=1 on the triggerer): "Executing <Task ...> took 1.583 seconds"
SLOW_STEP = re.compile(r"Executing <.*> took ([0-9.]+) seconds")
BLOCKED_THRESHOLD = 0.2  # [triggerer] default warning threshold
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?)Z")
TASK_NAME = re.compile(r"name='([^']*)'")
# live_loop_cpu.py: "<time> pid=<pid> cpu=0.123 <Task pending name='...' ...>"
CPU_STEP = re.compile(r" cpu=([0-9.]+) ")


@dataclass
class Run:
    dag_id: str
    label: str
    conf: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    state: str = "not started"
    seconds: float = 0.0
    tasks: dict[str, str] = field(default_factory=dict)  # task_id (or task_id[map_index]) -> state
    error: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


class Scenario:
    """Starts the runs in dependency chains (one thread each) and records what happened."""

    def __init__(self, live: LiveAirflow, sandbox: Any) -> None:
        self.live = live
        self.sandbox = sandbox
        self.runs: dict[tuple[str, str], Run] = {}
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + SCENARIO_TIMEOUT

    def api(self) -> Api:
        return Api(self.live.base_url)

    def run(self, api: Api, dag_id: str, label: str = "manual", conf: dict | None = None, **kw: Any) -> Run:
        run = Run(dag_id, label, dict(conf or {}))
        with self.lock:
            self.runs[(dag_id, label)] = run
        started = time.monotonic()
        run.run_id = api.trigger(dag_id, run.conf)
        hook = kw.get("while_running")
        if hook is not None:
            hook(api, run)
        timeout = min(kw.get("timeout", RUN_TIMEOUT), self.deadline - started)
        run.state, _ = self.live.wait_run(dag_id, run.run_id, max(1.0, timeout - (time.monotonic() - started)))
        run.seconds = time.monotonic() - started
        if run.state == "timeout":
            # Fail the run so its deferred tasks and triggers stop; the table shows the timeout.
            api.set_run_state(dag_id, run.run_id, "failed")
        run.tasks = {
            ti["task_id"] + (f"[{ti['map_index']}]" if ti["map_index"] >= 0 else ""): str(ti["state"])
            for ti in api.task_instances(dag_id, run.run_id)
        }
        return run

    def chain(self, name: str, steps: Any) -> threading.Thread:
        def body() -> None:
            api = self.api()
            try:
                steps(api)
            except Exception as exc:  # recorded; the tests report it
                with self.lock:
                    self.runs[(name, "chain error")] = Run(name, "chain error", state="error", error=repr(exc))
            finally:
                api.close()

        thread = threading.Thread(target=body, name=f"live-{name}", daemon=True)
        thread.start()
        return thread

    # -- the human-in-the-loop answers ----------------------------------------------------------
    def answer(self, option: str) -> Any:
        def while_running(api: Api, run: Run) -> None:
            path = f"/api/v2/dags/{run.dag_id}/dagRuns/{run.run_id}/taskInstances/approve_plan/-1/hitlDetails"
            deadline = time.monotonic() + HITL_TIMEOUT
            ti_path = f"/api/v2/dags/{run.dag_id}/dagRuns/{run.run_id}/taskInstances/approve_plan"
            while time.monotonic() < deadline:
                answer = api.request("GET", path)
                parked = api.request("GET", ti_path).json().get("state") in ("awaiting_input", "deferred")
                if answer.status_code == 200 and parked:
                    # Airflow 3.3.2 fails the task when the answer comes before the scheduler has
                    # processed the executor's event for the parked attempt ("finished with state
                    # success, but the task instance's state attribute is queued"). A person answers
                    # minutes later; the test waits for that event instead.
                    settle = time.monotonic() + ANSWER_DELAY
                    while not self.live.executor_events(run.dag_id, run.run_id, "approve_plan"):
                        if time.monotonic() > settle:
                            run.notes["hitl_early"] = f"no executor event after {ANSWER_DELAY:.0f} s"
                            break
                        time.sleep(0.5)
                    run.notes["hitl_request"] = answer.json()
                    audience = self.sandbox.fake("yandex_audience")
                    run.notes["requests_before_answer"] = len(audience.requests)
                    run.notes["hitl_response"] = api.respond(run.dag_id, run.run_id, "approve_plan", option)
                    return
                if api.run(run.dag_id, run.run_id)["state"] in ("success", "failed"):
                    return
                time.sleep(1)
            run.notes["hitl_error"] = f"no approval request within {HITL_TIMEOUT:.0f} s"

        return while_running

    def play(self) -> None:
        def lytics(api: Api) -> None:
            self.run(api, LYTICS)
            self.run(api, LYTICS_DOWNSTREAM)

        def segment(api: Api) -> None:
            self.run(api, SEGMENT)

        def criteo(api: Api) -> None:
            self.run(api, CRITEO, timeout=CRITEO_TIMEOUT)

        def yandex(api: Api) -> None:
            self.run(api, CRM)
            # One segment at a time on the Audience fake, so its request log tells the runs apart.
            self.run(api, REVIEWED, "auto")
            self.run(api, REVIEWED, "approve", {"shift": 200}, while_running=self.answer("Approve"))
            self.run(api, REVIEWED, "reject", {"shift": 0}, while_running=self.answer("Reject"))

        def direct(api: Api) -> None:
            # Its default segment (1001) is one the Direct fake lists to its login. The CRM refresh
            # grants its segments to another login, so Direct would not list those.
            self.run(api, DIRECT)

        threads = [
            self.chain("lytics", lytics),
            self.chain("segment", segment),
            self.chain("yandex", yandex),
            self.chain("direct", direct),
        ]
        if not ISOLATE_CRITEO:
            threads.append(self.chain("criteo", criteo))
        for thread in threads:
            thread.join(timeout=max(0.0, self.deadline - time.monotonic()) + 60)
        if ISOLATE_CRITEO:
            self.chain("criteo", criteo).join(timeout=max(0.0, self.deadline - time.monotonic()) + 60)

    def get(self, dag_id: str, label: str = "manual") -> Run:
        run = self.runs.get((dag_id, label))
        if run is None:
            errors = [r.error for r in self.runs.values() if r.error]
            pytest.fail(f"{dag_id} ({label}) was never started; chain errors: {errors}")
        return run


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def live_sandbox():
    from airflow_audience_provider.sandbox.server import SandboxServer

    with SandboxServer() as sandbox:
        for vendor in ("lytics", "segment", "yandex_audience"):
            sandbox.fake(vendor).configure(processing_seconds=PROCESSING_SECONDS)
        yield sandbox


@pytest.fixture(scope="module")
def live(live_sandbox):
    keep = os.environ.get("AUDIENCE_LIVE_HOME")
    home = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="aap-live-"))
    if keep:
        shutil.rmtree(home, ignore_errors=True)
    # The examples' time-shrinking variables: poll every second; Lytics' size counts as settled
    # after 3 equal readings 3 s apart (the fake lists no reevaluation job, Lytics' documented
    # behaviour); an edited BATCH Segment audience counts as computed 2 s after the edit, not a day.
    env = {
        **live_sandbox.env(),
        "AUDIENCE_EXAMPLE_POLL_SECONDS": "1",
        "AUDIENCE_EXAMPLE_SETTLE_SECONDS": "3",
        "AUDIENCE_EXAMPLE_BATCH_WAIT_SECONDS": "2",
    }
    if not TRIGGERER_RENDERS_TEMPLATES:
        # The Criteo sensor starts on a worker here: its first check must come before the upload is live.
        env["AUDIENCE_EXAMPLE_CRITEO_DELAY_SECONDS"] = str(PROCESSING_SECONDS)
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o711)  # mkdtemp's 0700: PostgreSQL's own user must reach its directory inside
    database = PostgresServer(home / "postgres")
    broker: RedisServer | None = None
    if CELERY:
        broker = RedisServer(home / "redis")
        broker.start()
        shared = home / "shared"  # stands in for storage every worker mounts (or object storage)
        env.update(
            AIRFLOW__AUDIENCE__SNAPSHOT_BASE_PATH=str(shared / "audience_snapshots"),
            AIRFLOW__AUDIENCE__RATE_LIMIT_BACKEND=broker.url(2),
            AUDIENCE_EXAMPLE_DATA_DIR=str(shared / "data"),
        )
        (shared / "data").mkdir(parents=True, exist_ok=True)
        deployment = LiveAirflow(
            home,
            database,
            env,
            parallelism=4,
            executor="CeleryExecutor",
            broker_url=broker.url(0),
            celery_workers=CELERY_WORKERS,
        )
    else:
        deployment = LiveAirflow(home, database, env, parallelism=4)
    RESULTS.executor = deployment.executor
    try:
        RESULTS.timings["postgres"] = database.start()
        RESULTS.timings["db migrate"] = deployment.migrate()
        RESULTS.timings["start"] = deployment.start()
        started = time.monotonic()
        deployment.wait_dags(ALL_DAGS)
        RESULTS.timings["parse"] = time.monotonic() - started
        yield deployment
    finally:
        stopped = deployment.stop()
        if broker is not None:
            stopped["redis-server"] = broker.stop()
        stopped["postgres"] = database.stop()  # last: every Airflow process is gone
        print(f"\nlive Airflow home: {home}; components stopped: {stopped}")
        if not keep and os.environ.get("AUDIENCE_LIVE_KEEP") != "1":
            shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def scenario(live, live_sandbox) -> Scenario:
    play = Scenario(live, live_sandbox)
    started = time.monotonic()
    play.play()
    RESULTS.timings["runs"] = time.monotonic() - started
    for run in play.runs.values():
        RESULTS.rows.append(
            RunRow(
                run.dag_id, run.label, run.state, run.seconds, sorted(_trigger_logs(live, run)) if run.run_id else []
            )
        )
    return play


# ---------------------------------------------------------------------------------------------- helpers
def _ti_dir(live: LiveAirflow, run: Run, task_id: str) -> Path:
    return live.task_log_folder / f"dag_id={run.dag_id}" / f"run_id={run.run_id}" / f"task_id={task_id}"


def _trigger_logs(live: LiveAirflow, run: Run) -> dict[str, str]:
    """``{task_id: trigger log text}`` of every task of the run the triggerer ran a trigger for."""
    found: dict[str, str] = {}
    folder = live.task_log_folder / f"dag_id={run.dag_id}" / f"run_id={run.run_id}"
    for path in sorted(folder.glob("task_id=*/**/*.trigger.*.log")):
        task_id = next(p.name.split("=", 1)[1] for p in path.parents if p.name.startswith("task_id="))
        found[task_id] = found.get(task_id, "") + path.read_text(errors="replace")
    return found


def _fired_in_triggerer_log(live: LiveAirflow, run: Run, task_id: str) -> bool:
    """Whether the triggerer's own log has the trigger's "Trigger fired event" line.

    Airflow's triggerer reads its runner's log lines and trigger states on separate sockets. When it
    handles a trigger's end first, it has closed that trigger's log file, and the trigger's last
    lines go to the triggerer's own log, with the trigger's name (``<dag>/<run>/<task>/...``).
    """
    name = f"name='{run.dag_id}/{run.run_id}/{task_id}/"
    text = live.components["triggerer"].log_path.read_text(errors="replace")
    return any(TRIGGER_FIRED in line and name in line for line in text.splitlines())


def _task_log(live: LiveAirflow, run: Run, task_id: str) -> str:
    relative = _ti_dir(live, run, task_id).relative_to(live.task_log_folder)
    dirs = [folder / relative for folder in live.log_folders]
    paths = sorted(p for d in dirs for p in d.glob("**/attempt=*.log") if p.name.endswith(".log"))
    return "".join(p.read_text(errors="replace") for p in paths if ".trigger." not in p.name)


def _xcom(live: LiveAirflow, run: Run, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
    assert live.api is not None
    return live.api.xcom(run.dag_id, run.run_id, task_id, key, map_index)


def _assert_success(run: Run, expected_tasks: dict[str, str]) -> None:
    detail = f"{run.dag_id} ({run.label}) {run.state} after {run.seconds:.0f} s; tasks {run.tasks}; {run.error}"
    assert run.state == "success", detail
    assert run.tasks == expected_tasks, detail


def _assert_deferred_through_triggerer(live: LiveAirflow, run: Run) -> None:
    assert live.sampler is not None
    trigger_logs = _trigger_logs(live, run)
    for task_id in sorted(EXPECTED_DEFERRED.get(run.dag_id, ())):
        seen = live.sampler.observation(run.dag_id, run.run_id, task_id)
        where = f"{run.dag_id}.{task_id}: states seen {seen.states}"
        assert "deferred" in seen.states, where
        assert any(cp.startswith("airflow_audience_provider.triggers.") for cp in seen.trigger_classpaths), where
        fired = TRIGGER_FIRED in trigger_logs.get(task_id, "") or _fired_in_triggerer_log(live, run, task_id)
        assert fired, f"{where}; no fired trigger in its trigger log nor in the triggerer's"
        assert seen.states[-1] == "success", where
        # Resumed on a worker after the trigger fired: deferred, then scheduled/queued/running again.
        after = seen.states[seen.states.index("deferred") + 1 :]
        assert "running" in after or seen.states[-1] == "success", where


# ---------------------------------------------------------------------------------------------- tests
def test_deployment_is_healthy_and_parses_every_example(live):
    health = live.wait_healthy(timeout=30)
    for part in ("metadatabase", "scheduler", "triggerer", "dag_processor"):
        assert health[part]["status"] == "healthy", health
    assert live.api is not None
    assert live.api.import_errors() == []
    examples = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "example_dags").glob("example_*.py"))
    assert sorted(ALL_DAGS) == examples  # a new example must be added to this test


def test_lytics_refresh_and_downstream(live, scenario):
    run = scenario.get(LYTICS)
    _assert_success(
        run,
        dict.fromkeys(["ensure_group", "upsert_segment", "reevaluate", "wait_for_reevaluation", "report"], "success"),
    )
    upsert = _xcom(live, run, "upsert_segment")
    assert upsert["action"] == "created"
    refreshed = _xcom(live, run, "wait_for_reevaluation")
    assert refreshed["segment_id"] == upsert["segment_id"] and refreshed["size"] > 0
    assert _xcom(live, run, "report")["size"] == refreshed["size"]
    _assert_deferred_through_triggerer(live, run)
    assert live.api is not None
    uris = {e["uri"] for e in live.api.asset_events()}
    assert refreshed["asset_uri"] in uris

    downstream = scenario.get(LYTICS_DOWNSTREAM)
    _assert_success(downstream, {"use_refreshed_audience": "success"})
    assert _xcom(live, downstream, "use_refreshed_audience") == []  # started by hand: no triggering events


def test_segment_rollout(live, scenario):
    run = scenario.get(SEGMENT)
    _assert_success(
        run,
        dict.fromkeys(
            ["upsert_audience", "preview_size", "enable_audience", "wait_until_computed", "report"], "success"
        ),
    )
    computed = _xcom(live, run, "wait_until_computed")
    assert computed["audience_id"] == _xcom(live, run, "upsert_audience")["audience_id"]
    assert computed["status"].lower() == "live" or computed["status"] == "computed", computed
    assert _xcom(live, run, "report")["size"] == computed["size"]
    _assert_deferred_through_triggerer(live, run)


def test_yandex_audience_crm_refresh_with_a_reschedule_mode_sensor(live, scenario):
    run = scenario.get(CRM)
    _assert_success(
        run,
        dict.fromkeys(
            [
                "export_crm",
                "sync_crm",
                "wait_for_processing",
                "build_lookalike",
                "wait_for_lookalike",
                "grant_agency_crm",
                "grant_agency_lookalike",
                "remove_export",
            ],
            "success",
        ),
    )
    synced = _xcom(live, run, "sync_crm")
    assert synced["action"] == "created" and synced["counts"]["unique"] == 300
    processed = _xcom(live, run, "wait_for_processing")
    assert processed["status"] == "processed" and processed["segment_id"] == synced["segment_id"]
    lookalike = _xcom(live, run, "build_lookalike")
    ready = _xcom(live, run, "wait_for_lookalike")
    assert ready["segment_id"] == lookalike["segment_id"] and ready["status"] == "processed"
    _assert_deferred_through_triggerer(live, run)

    # reschedule mode: the sensor gave its slot back between checks, without the triggerer.
    assert live.sampler is not None
    seen = live.sampler.observation(CRM, run.run_id, "wait_for_lookalike")
    assert "up_for_reschedule" in seen.states and "deferred" not in seen.states, seen.states
    reschedules = live.query(
        "SELECT COUNT(*) FROM task_reschedule r JOIN task_instance ti ON ti.id = r.ti_id "
        "WHERE ti.dag_id = %s AND ti.run_id = %s AND ti.task_id = 'wait_for_lookalike'",
        CRM,
        run.run_id,
    )[0][0]
    assert reschedules >= 1
    assert "wait_for_lookalike" not in _trigger_logs(live, run)


def test_yandex_direct_retargeting(live, scenario):
    run = scenario.get(DIRECT)
    assert run.state == "success", (run.state, run.tasks, run.error)
    assert set(run.tasks.values()) == {"success"}, run.tasks
    assert {t.split("[")[0] for t in run.tasks} == {
        "segments_to_target",
        "list_definition",
        "upsert_retargeting_list",
        "attach_to_ad_groups",
    }
    assert _xcom(live, run, "segments_to_target") == [1001]  # the param's default: a segment Direct lists
    upserted = _xcom(live, run, "upsert_retargeting_list", map_index=0)
    assert upserted["retargeting_list_id"]


def test_reviewed_sync_poke_mode_sensor_and_automatic_review(live, scenario):
    run = scenario.get(REVIEWED, "auto")
    _assert_success(
        run,
        {
            "export_crm": "success",
            "plan_sync": "success",
            "review_plan": "success",
            "within_limits": "success",
            "approve_plan": "skipped",
            "sync_crm": "success",
            "wait_for_processing": "success",
            "remove_export": "success",
        },
    )
    assert _xcom(live, run, "sync_crm")["action"] == "created"
    # poke mode: one run of the task checked several times, never rescheduled nor deferred.
    assert live.sampler is not None
    seen = live.sampler.observation(REVIEWED, run.run_id, "wait_for_processing")
    assert not {"up_for_reschedule", "deferred"} & set(seen.states), seen.states
    checks = _task_log(live, run, "wait_for_processing").count("vendor status")
    assert checks >= 2, f"the poke-mode sensor checked {checks} time(s)"
    assert _xcom(live, run, "wait_for_processing")["status"] == "processed"


def test_reviewed_sync_approved_through_the_rest_api_sends_the_difference(live, scenario):
    run = scenario.get(REVIEWED, "approve")
    assert "hitl_error" not in run.notes, run.notes
    request = run.notes["hitl_request"]
    assert request["options"] == ["Approve", "Reject"]
    assert "removes 200 members" in request["body"], request["body"]
    assert run.notes["hitl_response"]["chosen_options"] == ["Approve"]
    _assert_success(
        run,
        {
            "export_crm": "success",
            "plan_sync": "success",
            "review_plan": "success",
            "within_limits": "skipped",
            "approve_plan": "success",
            "sync_crm": "success",
            "wait_for_processing": "success",
            "remove_export": "success",
        },
    )
    assert live.sampler is not None
    waited = live.sampler.observation(REVIEWED, run.run_id, "approve_plan").states
    assert {"awaiting_input", "deferred"} & set(waited), waited  # 3.3+: awaiting_input; 3.1/3.2: deferred
    synced = _xcom(live, run, "sync_crm")
    assert synced["action"] == "updated"
    assert synced["counts"]["added"] == 200 and synced["counts"]["removed"] == 200


def test_reviewed_sync_rejected_through_the_rest_api_sends_nothing(live, scenario, live_sandbox):
    run = scenario.get(REVIEWED, "reject")
    assert "hitl_error" not in run.notes, run.notes
    assert run.notes["hitl_response"]["chosen_options"] == ["Reject"]
    _assert_success(
        run,
        {
            "export_crm": "success",
            "plan_sync": "success",
            "review_plan": "success",
            "within_limits": "skipped",
            "approve_plan": "success",
            "sync_crm": "skipped",
            "wait_for_processing": "skipped",
            "remove_export": "success",
        },
    )
    plan = _xcom(live, run, "plan_sync")
    assert plan["counts"]["removed"] == 200 and plan["files"] == []
    audience = live_sandbox.fake("yandex_audience")
    after_answer = audience.requests[run.notes["requests_before_answer"] :]
    writes = [(r["method"], r["path"]) for r in after_answer if r["method"] != "GET"]
    assert writes == []


def test_criteo_contact_list_sync_starts_in_the_triggerer(live, scenario, live_sandbox):
    run = scenario.get(CRITEO)
    _assert_success(
        run,
        dict.fromkeys(
            [
                "export_customers",
                "ensure_segment",
                "ensure_exclusion",
                "sync_contact_list",
                "ensure_audience",
                "wait_until_live",
                "remove_export",
            ],
            "success",
        ),
    )
    live_at = _xcom(live, run, "wait_until_live")
    assert live_at["segment_id"] == _xcom(live, run, "sync_contact_list")["segment_id"]
    # The token cache: one token per Airflow home (each its own Fernet key and directory), one renewal
    # at most; without it each of the five Criteo tasks and the trigger minted their own.
    tokens = live_sandbox.fake("criteo").tokens_issued
    RESULTS.notes.append(f"criteo: {tokens} OAuth token(s) minted")
    assert tokens <= 2 + len(live.celery_workers)
    _assert_deferred_through_triggerer(live, run)
    assert live.sampler is not None
    states = live.sampler.observation(CRITEO, run.run_id, "wait_until_live").states
    before = states[: states.index("deferred")]
    if TRIGGERER_RENDERS_TEMPLATES:
        # start_from_trigger: straight from the scheduler to the triggerer, no worker before the event.
        assert not {"queued", "running"} & set(before), states
        assert "Pausing task as DEFERRED" not in _task_log(live, run, "wait_until_live")
    else:
        # Airflow 3.1/3.2: the triggerer renders no templates, so the templated sensor starts on a worker
        # and defers from there. The worker's task runner logs the pause; the 0.5 s state samples can
        # miss a run that short (a clean-clone CI run saw only none -> deferred).
        on_worker = {"queued", "running"} & set(before)
        assert on_worker or "Pausing task as DEFERRED" in _task_log(live, run, "wait_until_live"), states


def _log_time(line: str) -> float | None:
    match = LOG_TIME.match(line)
    return datetime.fromisoformat(match.group(1)).replace(tzinfo=UTC).timestamp() if match else None


def _ours(line: str) -> tuple[str, bool]:
    """The asyncio task name in a logged step, and whether it is one of our triggers' tasks."""
    name = m.group(1) if (m := TASK_NAME.search(line)) else "?"
    return name, any(name.startswith(f"{dag_id}/") for dag_id in ALL_DAGS)


def test_no_trigger_of_ours_blocked_the_triggerer_event_loop(live, scenario):
    """No step of our triggers used the triggerer's warning threshold (0.2 s) of CPU in the event loop.

    The triggerer's warning ("async thread was blocked for N seconds") names nothing: its watchdog
    only sees that a 0.1 s sleep woke late, which on a loaded machine also happens when the thread
    got no CPU. The harness times each event-loop step in the thread's CPU time
    (``live_loop_cpu.py``), which waiting for a CPU does not inflate, and logs it with its asyncio
    task; a trigger's task is named after its task instance (``<dag>/<run>/<task>/<map>/<try> (ID n)``).
    The table's footer attributes each warning to the asyncio-debug slow steps (wall time over
    0.1 s) that ended while the loop was held: ours, Airflow's tasks, or none.
    """
    cpu_steps = []
    if live.loop_cpu_log.exists():
        for line in live.loop_cpu_log.read_text(errors="replace").splitlines():
            if used := CPU_STEP.search(line):
                cpu_steps.append((float(used.group(1)), *_ours(line)))
    steps: list[tuple[float | None, float, str, bool]] = []
    warnings: list[tuple[float | None, float]] = []
    for line in live.components["triggerer"].log_path.read_text(errors="replace").splitlines():
        if step := SLOW_STEP.search(line):
            steps.append((_log_time(line), float(step.group(1)), *_ours(line)))
        elif blocked := BLOCKED_LOOP.search(line):
            warnings.append((_log_time(line), float(blocked.group(1))))
    attributed = {"ours": 0, "airflow": 0, "none": 0}
    for at, held in warnings:
        # A step is logged as it ends, the warning when the watchdog wakes up: within the held time.
        during = [s for s in steps if at is not None and s[0] is not None and at - held - 0.05 <= s[0] <= at]
        attributed["ours" if any(s[3] for s in during) else "airflow" if during else "none"] += 1
    ours_cpu = [used for used, _, ours in cpu_steps if ours]
    others_cpu = [used for used, _, ours in cpu_steps if not ours]
    ours_wall = [s[1] for s in steps if s[3]]
    RESULTS.notes.append(
        f"triggerer: {len(warnings)} blocked-loop warning(s) during slow steps of ours {attributed['ours']}, "
        f"of Airflow's tasks {attributed['airflow']}, of none {attributed['none']}; longest loop step in CPU "
        f"time: ours {max(ours_cpu or [0]):.3f} s, Airflow's {max(others_cpu or [0]):.3f} s; asyncio steps over "
        f"0.1 s wall: {len(ours_wall)} of ours (longest {max(ours_wall or [0]):.2f} s), {len(steps) - len(ours_wall)} "
        f"of Airflow's (longest {max([s[1] for s in steps if not s[3]] or [0]):.2f} s)"
    )
    # The triggerer's own start-up steps use more than 0.02 s: no file means the timing never ran.
    assert cpu_steps, f"no event-loop step timed in {live.loop_cpu_log}"
    assert [f"{name}: {used:.3f} s CPU" for used, name, ours in cpu_steps if ours and used >= BLOCKED_THRESHOLD] == []


def test_no_secret_and_no_clear_text_identifier_in_any_log(live, scenario, live_sandbox):
    import json
    from urllib.parse import quote

    secrets_: set[str] = set()
    for value in live_sandbox.connections().values():
        connection = json.loads(value)
        if connection.get("password"):
            secrets_ |= {connection["password"], quote(connection["password"], safe="")}
    criteo = live_sandbox.fake("criteo")
    with criteo.lock:
        secrets_ |= {str(token) for token in getattr(criteo, "_tokens", {})}
    identifiers = re.compile(r"[a-z0-9.]+@example\.com", re.IGNORECASE)  # the examples' sample e-mails
    files = [p for p in live.home.rglob("*") if p.is_file() and (p.suffix in (".log", ".out") or ".log" in p.name)]
    assert len(files) > 20
    leaks = []
    for path in files:
        text = path.read_text(errors="replace")
        leaks += [f"{path.relative_to(live.home)}: secret {s[:6]}..." for s in secrets_ if s and s in text]
        leaks += [f"{path.relative_to(live.home)}: identifier {m[:3]}..." for m in set(identifiers.findall(text))]
    assert leaks == []


# ---------------------------------------------------------------------------------------------- CeleryExecutor
@celery_only
def test_celery_tasks_ran_on_both_workers(live, scenario):
    rows = live.query("SELECT hostname, COUNT(*) FROM task_instance WHERE state = 'success' GROUP BY hostname")
    by_host = {host: count for host, count in rows}
    RESULTS.notes.append(f"celery: successful task instances per worker {by_host}")
    assert set(CELERY_WORKERS) <= set(by_host), by_host
    assert set(by_host) <= {*CELERY_WORKERS, None, ""}, by_host  # start_from_trigger tasks may have none
    for name in CELERY_WORKERS:  # each worker wrote its task logs into its own home
        assert any((live.worker_home(name) / "logs").glob("dag_id=*/**/*.log")), name


@celery_only
def test_celery_request_rates_per_account_stay_within_the_documented_limits(live, scenario, live_sandbox):
    peaks = []
    for vendor, (limit, window) in sorted(DOCUMENTED_LIMITS.items()):
        rates = live_sandbox.fake(vendor).request_rates(window - LATENCY_ALLOWANCE)
        assert rates["total"]["requests"] > 0, f"{vendor}: no request reached the sandbox"
        for account, seen in rates["accounts"].items():
            peaks.append(f"{vendor} {seen['peak']}/{limit} per {window:.0f} s")
            assert seen["peak"] <= limit, (vendor, account[:8], seen, limit)
    RESULTS.notes.append("celery: busiest window per account " + "; ".join(peaks))


@celery_only
def test_celery_host_local_snapshot_base_is_warned_about_loudly(live, scenario):
    run = scenario.get(CRM)
    text = _task_log(live, run, "sync_crm")
    assert SHARED_STATE_WARNING in text, text[-2000:]
    assert "!!!" in text
