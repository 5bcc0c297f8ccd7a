"""A real Airflow deployment for the live test: separate api-server, scheduler, dag-processor and
triggerer processes on a throw-away ``AIRFLOW_HOME``, with the example DAGs and the sandbox. The
metadata DB is a private PostgreSQL cluster in that home (:class:`PostgresServer`): SQLite allows one
writer at a time, and on a loaded machine "database is locked" killed the scheduler.

Every process is started in its own session (process group) and stopped with TERM, then KILL
after a grace period, whatever happened before. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg2
from helpers import apt_install, redis_server_binary

try:  # the CeleryExecutor deployment only: a client to check the broker is up
    import redis
except ImportError:  # pragma: no cover - redis is in the test lock
    redis = None  # type: ignore[assignment]

AIRFLOW_BIN = str(Path(sys.executable).with_name("airflow"))
REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "example_dags"

START_TIMEOUT = 180.0
HTTP_TIMEOUT = 30.0
STOP_GRACE = 20.0
FINISHED = {"success", "failed"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Component:
    """One Airflow (or Celery) process in its own process group, output in ``log_path``."""

    name: str
    command: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # setsid: its own process group, killed as a whole
                cwd=self.env["AIRFLOW_HOME"],
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, grace: float = STOP_GRACE) -> str:
        """TERM the group, KILL it after ``grace`` seconds; returns how it ended."""
        if self.process is None:
            return "not started"
        pgid = self.process.pid
        how = "exited"
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
            how = "terminated"
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            how = "killed"
        # Children (e.g. LocalExecutor workers) may outlive the leader: KILL the group in any case.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        return how

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class RedisServer:
    """A private ``redis-server`` on a free loopback port (no persistence), in its own process group."""

    def __init__(self, workdir: Path) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed and could not be installed with apt-get (needs root)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.component = Component(
            "redis-server",
            [binary, *args, "--dir", str(workdir)],
            workdir / "redis-server.out",
            {**os.environ, "AIRFLOW_HOME": str(workdir)},
        )

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout: float = 30.0) -> None:
        self.component.start()
        client = redis.Redis.from_url(self.url(0))
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if time.monotonic() > deadline or not self.component.alive():
                        raise RuntimeError(f"redis-server did not start:\n{self.component.tail()}") from None
                    time.sleep(0.1)
        finally:
            client.close()

    def stop(self) -> str:
        return self.component.stop(grace=10)


def postgres_bindir() -> Path | None:
    """The directory of the newest installed PostgreSQL server's ``initdb``, ``postgres`` and ``pg_ctl``."""

    def found() -> Path | None:
        # Debian keeps them out of PATH, one directory per major version.
        debian = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"),
            key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
        )
        if debian:
            return debian[-1].parent
        on_path = shutil.which("initdb")
        return Path(on_path).parent if on_path else None

    return apt_install("postgresql", found)  # type: ignore[no-any-return]


class PostgresServer:
    """A private PostgreSQL cluster for the deployment's metadata DB, in ``workdir``.

    ``initdb`` makes it with one superuser, ``airflow``, trusted on loopback and on its unix
    socket (in ``workdir``, not /var/run); the server listens on 127.0.0.1 only, on a free port,
    and runs in its own process group. Durability is switched off: the cluster lives as long as
    the test. PostgreSQL refuses to run as root, so as root initdb and the server run as the
    ``postgres`` system user (``runuser``) and ``workdir`` belongs to it.
    """

    USER = "airflow"
    DATABASE = "airflow"

    def __init__(self, workdir: Path) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed and could not be installed with apt-get (needs root)")
        self.bindir = bindir
        self.workdir = workdir
        self.datadir = workdir / "data"
        self.port = free_port()
        self.component: Component | None = None

    @property
    def sqlalchemy_url(self) -> str:
        """Airflow's ``[database] sql_alchemy_conn``; Airflow derives ``postgresql+asyncpg://`` from it."""
        return f"postgresql+psycopg2://{self.USER}@127.0.0.1:{self.port}/{self.DATABASE}"

    def connect(self, dbname: str = DATABASE) -> Any:
        """A psycopg2 connection in autocommit mode: no transaction stays open between reads."""
        connection = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.USER, dbname=dbname, connect_timeout=10
        )
        connection.autocommit = True
        return connection

    def _as_owner(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            return
        for parent in self.workdir.parents:  # the postgres user must reach its directory
            if not parent.stat().st_mode & 0o001:
                raise RuntimeError(
                    f"{parent} is not searchable by others: the postgres user cannot reach {self.workdir}"
                )
        shutil.chown(self.workdir, "postgres", "postgres")
        self.workdir.chmod(0o700)

    def start(self, timeout: float = START_TIMEOUT) -> float:
        """initdb, start the server, create the database; returns the seconds taken."""
        started = time.monotonic()
        self._prepare_workdir()
        initdb = [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", self.USER, "-E", "UTF8"]
        initdb += ["--no-locale", "--auth-local=trust", "--auth-host=trust", "--no-sync"]
        done = subprocess.run(
            self._as_owner(initdb), capture_output=True, text=True, timeout=timeout, check=False, cwd=self.workdir
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.workdir),
            "max_connections": "300",  # every Airflow process keeps a pool (5 + 10 overflow)
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        command = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        command += [arg for name, value in settings.items() for arg in ("-c", f"{name}={value}")]
        self.component = Component(
            "postgres",
            self._as_owner(command),
            self.workdir.parent / "postgres.out",
            {**os.environ, "AIRFLOW_HOME": str(self.workdir)},
        )
        self.component.start()
        deadline = time.monotonic() + timeout
        while True:
            try:
                with contextlib.closing(self.connect("postgres")) as connection, connection.cursor() as cursor:
                    cursor.execute(f"CREATE DATABASE {self.DATABASE}")
                return time.monotonic() - started
            except psycopg2.OperationalError:
                if time.monotonic() > deadline or not self.component.alive():
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.component.tail()}") from None
                time.sleep(0.2)

    def stop(self) -> str:
        """``pg_ctl stop -m fast`` (clients disconnected, clean shutdown), then TERM/KILL its process group."""
        if self.component is None:
            return "not started"
        how = "pg_ctl stop failed"
        if self.component.alive():
            pg_ctl = [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.datadir), "-m", "fast", "-w", "-t", "30"]
            with contextlib.suppress(subprocess.TimeoutExpired):
                done = subprocess.run(
                    self._as_owner(pg_ctl), capture_output=True, timeout=60, check=False, cwd=self.workdir
                )
                if done.returncode == 0:
                    how = "pg_ctl stop"
        ended = self.component.stop(grace=10)  # the whole group, whatever pg_ctl managed
        return how if how == "pg_ctl stop" else f"{how}; {ended}"


@dataclass
class TIObservation:
    """States one task instance was seen in (in order, consecutive duplicates dropped) and its triggers."""

    states: list[str] = field(default_factory=list)
    trigger_classpaths: set[str] = field(default_factory=set)


class StateSampler(threading.Thread):
    """Samples task-instance states and trigger rows from the metadata DB twice a second.

    Deferrals that end within one sample interval can be missed here; the trigger log files the
    triggerer writes next to each task log are the second, complete witness.
    """

    def __init__(self, database: PostgresServer, interval: float = 0.5) -> None:
        super().__init__(name="live-state-sampler", daemon=True)
        self.database = database
        self.connection: Any = None
        self.interval = interval
        self.stop_event = threading.Event()
        self.seen: dict[tuple[str, str, str, int], TIObservation] = {}
        self.triggers: dict[int, str] = {}
        self.lock = threading.Lock()
        self.errors = 0

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.interval):
                try:
                    self.sample()
                except psycopg2.Error:
                    self.errors += 1
                    self.close()  # reconnect on the next sample
        finally:
            self.close()

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(psycopg2.Error):
                self.connection.close()
            self.connection = None

    def sample(self) -> None:
        if self.connection is None:
            self.connection = self.database.connect()
        with self.connection.cursor() as cursor:
            cursor.execute(
                "SELECT ti.dag_id, ti.run_id, ti.task_id, ti.map_index, ti.state, t.classpath "
                "FROM task_instance ti LEFT JOIN trigger t ON t.id = ti.trigger_id"
            )
            rows = cursor.fetchall()
            cursor.execute("SELECT id, classpath FROM trigger")
            triggers = cursor.fetchall()
        with self.lock:
            for dag_id, run_id, task_id, map_index, raw_state, classpath in rows:
                obs = self.seen.setdefault((dag_id, run_id, task_id, map_index), TIObservation())
                state = raw_state or "none"
                if not obs.states or obs.states[-1] != state:
                    obs.states.append(state)
                if classpath:
                    obs.trigger_classpaths.add(classpath)
            for trigger_id, classpath in triggers:
                self.triggers[trigger_id] = classpath

    def observation(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> TIObservation:
        with self.lock:
            obs = self.seen.get((dag_id, run_id, task_id, map_index), TIObservation())
            return TIObservation(list(obs.states), set(obs.trigger_classpaths))

    def stop(self) -> None:
        self.stop_event.set()
        self.join(timeout=10)


class Api:
    """The REST API of the api-server, with a JWT from ``/auth/token`` (simple auth manager, all admins)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=HTTP_TIMEOUT)
        self.refresh_token()

    def refresh_token(self) -> None:
        answer = self.client.get("/auth/token")
        answer.raise_for_status()
        self.client.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"

    def request(self, method: str, path: str, retry: bool | None = None, **kwargs: Any) -> httpx.Response:
        """One call; reads (and ``retry=True`` writes) are retried on 5xx (a loaded api-server's
        transient "Database error", rolled back)."""
        attempts = 4 if (method == "GET" if retry is None else retry) else 1
        for attempt in range(attempts):
            answer = self.client.request(method, path, **kwargs)
            if answer.status_code == 401:  # token expired during a long wait
                self.refresh_token()
                answer = self.client.request(method, path, **kwargs)
            if answer.status_code < 500 or attempt == attempts - 1:
                break
            time.sleep(1 + attempt)
        return answer

    def json(self, method: str, path: str, retry: bool | None = None, **kwargs: Any) -> Any:
        answer = self.request(method, path, retry, **kwargs)
        if answer.status_code >= 400:
            raise AssertionError(f"{method} {path}: {answer.status_code} {answer.text[:1000]}")
        return answer.json()

    def close(self) -> None:
        self.client.close()

    # -- DAGs and runs ---------------------------------------------------------------------------
    def dag_ids(self) -> list[str]:
        return sorted(d["dag_id"] for d in self.json("GET", "/api/v2/dags", params={"limit": 100})["dags"])

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.json("GET", "/api/v2/importErrors")["import_errors"])

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        body = {"logical_date": None, "conf": conf or {}}
        return str(self.json("POST", f"/api/v2/dags/{dag_id}/dagRuns", retry=True, json=body)["dag_run_id"])

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return dict(self.json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}"))

    def set_run_state(self, dag_id: str, run_id: str, state: str) -> None:
        self.json("PATCH", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}", json={"state": state})

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        return list(self.json("GET", path, params={"limit": 100})["task_instances"])

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        answer = self.request("GET", path, params={"map_index": map_index, "deserialize": True})
        if answer.status_code == 404:
            return None
        if answer.status_code >= 400:
            raise AssertionError(f"GET {path}: {answer.status_code} {answer.text[:500]}")
        return answer.json()["value"]

    def hitl_details(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return list(self.json("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/hitlDetails")["hitl_details"])

    def respond(self, dag_id: str, run_id: str, task_id: str, option: str, map_index: int = -1) -> dict[str, Any]:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails"
        return dict(self.json("PATCH", path, json={"chosen_options": [option], "params_input": {}}))

    def asset_events(self) -> list[dict[str, Any]]:
        return list(self.json("GET", "/api/v2/assets/events", params={"limit": 100})["asset_events"])


class LiveAirflow:
    """api-server, scheduler, dag-processor and triggerer on ``home``; LocalExecutor by default.

    With ``executor="CeleryExecutor"`` and ``broker_url`` (a Redis URL), :meth:`start` also starts
    one ``airflow celery worker`` per name in ``celery_workers``, each with its own ``AIRFLOW_HOME``
    under ``home/workers/<name>`` (task logs, default snapshot and rate-limit directories) but the
    same metadata DB and configuration; each records its own name as the task instances' hostname.

    :param database: the metadata DB every process uses (also read by the test).
    :param extra_env: added to every process's environment (sandbox connections, example settings).
    """

    def __init__(
        self,
        home: Path,
        database: PostgresServer,
        extra_env: dict[str, str],
        parallelism: int = 4,
        executor: str = "LocalExecutor",
        broker_url: str | None = None,
        celery_workers: tuple[str, ...] = (),
        worker_concurrency: int = 2,
    ) -> None:
        self.home = home
        self.database = database
        self.celery_workers = celery_workers
        self.worker_concurrency = worker_concurrency
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.executor = executor
        self.components: dict[str, Component] = {}
        self.sampler: StateSampler | None = None
        self.api: Api | None = None
        self.stopped: dict[str, str] = {}
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        env.update(
            AIRFLOW_HOME=str(home),
            AIRFLOW__CORE__DAGS_FOLDER=str(EXAMPLES),
            AIRFLOW__CORE__LOAD_EXAMPLES="False",
            # Explicit for every process: a Celery worker's AIRFLOW_HOME differs, the DB must not follow it.
            AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database.sqlalchemy_url,
            AIRFLOW__CORE__EXECUTOR=executor,
            AIRFLOW__CORE__PARALLELISM=str(parallelism),
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="False",
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base_url}/execution/",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS="True",
            AIRFLOW__API__BASE_URL=self.base_url,
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__SECRET_KEY=secrets.token_hex(16),
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
            # Runs come from the REST API only: no cron or Asset-scheduled runs of their own.
            AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE="False",
            AIRFLOW__LOGGING__BASE_LOG_FOLDER=str(home / "logs"),
            AIRFLOW__OPENLINEAGE__DISABLED="True",
            PYTHONUNBUFFERED="1",
        )
        if broker_url is not None:
            env.update(
                AIRFLOW__CELERY__BROKER_URL=broker_url,
                AIRFLOW__CELERY__RESULT_BACKEND=broker_url.rsplit("/", 1)[0] + "/1",
                AIRFLOW__CELERY__WORKER_CONCURRENCY=str(worker_concurrency),
                AIRFLOW__OPERATORS__DEFAULT_QUEUE="default",
            )
        env.update(extra_env)
        self.env = env

    def worker_home(self, name: str) -> Path:
        return self.home / "workers" / name

    def worker_env(self, name: str) -> dict[str, str]:
        """One Celery worker's environment: its own home, log folder and log-server port."""
        home = self.worker_home(name)
        return {
            **self.env,
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            # The task instances' hostname: each worker its own name, although both run on this host.
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "live_hostname.worker_hostname",
            "AUDIENCE_LIVE_WORKER_HOSTNAME": name,
            "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parent), os.environ.get("PYTHONPATH")) if p),
        }

    @property
    def log_folders(self) -> list[Path]:
        """Where task logs are: the deployment's log folder, then each Celery worker's."""
        return [self.task_log_folder] + [self.worker_home(name) / "logs" for name in self.celery_workers]

    @property
    def loop_cpu_log(self) -> Path:
        """The triggerer's event-loop steps that used 0.02 s of CPU or more (live_loop_cpu.py)."""
        return self.home / "triggerer-loop-cpu.txt"

    @property
    def task_log_folder(self) -> Path:
        return self.home / "logs"

    def _component(self, name: str, *args: str) -> Component:
        component = Component(name, [AIRFLOW_BIN, *args], self.home / f"{name}.out", self.env)
        self.components[name] = component
        return component

    def migrate(self, timeout: float = 300) -> float:
        self.home.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        done = subprocess.run(
            [AIRFLOW_BIN, "db", "migrate"], env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"airflow db migrate failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return time.monotonic() - started

    def start(self, extra_components: dict[str, list[str]] | None = None) -> float:
        """Start every component and wait until the API reports them all healthy; returns the seconds taken."""
        started = time.monotonic()
        self._component("api-server", "api-server", "-H", "127.0.0.1", "-p", str(self.port), "-w", "1").start()
        self._component("scheduler", "scheduler").start()
        self._component("dag-processor", "dag-processor").start()
        triggerer = self._component("triggerer", "triggerer")
        # Every event-loop step's CPU time (live_loop_cpu.py), and asyncio debug: every step that
        # holds the loop > 0.1 s of wall time is logged with its task's name.
        triggerer.command = [sys.executable, str(Path(__file__).with_name("live_loop_cpu.py")), "triggerer"]
        triggerer.env = {**self.env, "PYTHONASYNCIODEBUG": "1", "AUDIENCE_LIVE_LOOP_LOG": str(self.loop_cpu_log)}
        triggerer.start()
        for name in self.celery_workers:
            self.worker_home(name).mkdir(parents=True, exist_ok=True)
            command = [AIRFLOW_BIN, "celery", "worker", "--celery-hostname", f"{name}@%h", "--queues", "default"]
            command += ["--concurrency", str(self.worker_concurrency), "--without-mingle", "--without-gossip"]
            worker = Component(name, command, self.home / f"{name}.out", self.worker_env(name))
            self.components[name] = worker
            worker.start()
        for name, command in (extra_components or {}).items():
            component = Component(name, command, self.home / f"{name}.out", self.env)
            self.components[name] = component
            component.start()
        self.wait_healthy()
        self.wait_workers_ready()
        self.api = Api(self.base_url)
        self.sampler = StateSampler(self.database)
        self.sampler.start()
        return time.monotonic() - started

    def check_alive(self) -> None:
        for component in self.components.values():
            if not component.alive():
                code = component.process.returncode if component.process else None
                raise RuntimeError(f"{component.name} exited with {code}:\n{component.tail()}")

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                self.check_alive()
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    last = client.get(f"{self.base_url}/api/v2/monitor/health").json()
                    parts = ("metadatabase", "scheduler", "triggerer", "dag_processor")
                    if all((last.get(p) or {}).get("status") == "healthy" for p in parts):
                        return dict(last)
                time.sleep(1)
        raise TimeoutError(f"Airflow not healthy after {timeout:.0f} s: {last}\n{self.tails()}")

    def wait_workers_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every Celery worker has logged that it is ready to take tasks."""
        deadline = time.monotonic() + timeout
        waiting = list(self.celery_workers)
        while waiting and time.monotonic() < deadline:
            self.check_alive()
            waiting = [name for name in waiting if " ready." not in self.components[name].tail(200_000)]
            time.sleep(1)
        if waiting:
            raise TimeoutError(f"Celery workers not ready after {timeout:.0f} s: {waiting}\n{self.tails()}")

    def wait_dags(self, dag_ids: list[str], timeout: float = START_TIMEOUT) -> None:
        """Wait until the dag-processor has serialised every DAG in ``dag_ids``."""
        assert self.api is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            errors = self.api.import_errors()
            if errors:
                raise AssertionError(f"DAG import errors: {errors}")
            if set(dag_ids) <= set(self.api.dag_ids()):
                return
            time.sleep(1)
        raise TimeoutError(f"DAGs not parsed after {timeout:.0f} s: {sorted(set(dag_ids) - set(self.api.dag_ids()))}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float) -> tuple[str, float]:
        """Wait for the run to finish; returns (state, seconds) with state ``timeout`` if it did not."""
        assert self.api is not None
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            state = self.api.run(dag_id, run_id)["state"]
            if state in FINISHED:
                return state, time.monotonic() - started
            time.sleep(1)
        return "timeout", time.monotonic() - started

    def executor_events(self, dag_id: str, run_id: str, task_id: str) -> int:
        """How many executor events about a finished process the scheduler has processed for this task
        instance (its log). CeleryExecutor also reports ``queued`` (the Celery task id) on sending:
        those do not count."""
        text = self.components["scheduler"].log_path.read_text(errors="replace")
        key = f"task_id='{task_id}', run_id='{run_id}'"
        return sum(
            1
            for line in text.splitlines()
            if "Received executor event" in line
            and "with state queued" not in line
            and f"dag_id='{dag_id}'" in line
            and key in line
        )

    def tails(self, chars: int = 1500) -> str:
        return "\n".join(f"--- {c.name} ---\n{c.tail(chars)}" for c in self.components.values())

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """Read the metadata DB (PostgreSQL; ``%s`` placeholders)."""
        with contextlib.closing(self.database.connect()) as connection, connection.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall())

    def task_logs(self, dag_id: str | None = None) -> Iterator[Path]:
        pattern = f"dag_id={dag_id}/**/*" if dag_id else "**/*"
        for folder in self.log_folders:
            for path in sorted(folder.glob(pattern)):
                if path.is_file():
                    yield path

    def stop(self) -> dict[str, str]:
        """Stop everything (idempotent): components in reverse start order, TERM then KILL."""
        if self.sampler is not None:
            self.sampler.stop()
        if self.api is not None:
            self.api.close()
            self.api = None
        for name in reversed(list(self.components)):
            if name not in self.stopped:
                self.stopped[name] = self.components[name].stop()
        return self.stopped


# ---------------------------------------------------------------------------------------------- results
@dataclass
class RunRow:
    dag_id: str
    label: str
    state: str
    seconds: float
    deferred: list[str]


@dataclass
class Results:
    """The table the live test prints: one row per DAG run it started."""

    rows: list[RunRow] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    executor: str = ""
    notes: list[str] = field(default_factory=list)

    def table(self) -> list[str]:
        width = max([len(r.dag_id) for r in self.rows] + [3])
        lines = [f"{'DAG':{width}s}  {'run':14s} {'state':8s} {'wall s':>7s}  tasks deferred"]
        for r in self.rows:
            deferred = ", ".join(r.deferred) or "-"
            lines.append(f"{r.dag_id:{width}s}  {r.label:14s} {r.state:8s} {r.seconds:7.1f}  {deferred}")
        if self.timings:
            lines.append("  ".join(f"{k} {v:.1f} s" for k, v in self.timings.items()) + f"  ({self.executor})")
        return lines + self.notes


RESULTS = Results()
