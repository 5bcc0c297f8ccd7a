"""Helpers shared by tests in several directories: local servers, sandbox connections, example-DAG runs.

Import it by name (``from helpers import ...``): ``tests/`` is on ``sys.path`` through its conftest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_audience_provider.core.ratelimit import RateLimiter
from airflow_audience_provider.core.transport import RetryPolicy
from airflow_audience_provider.sandbox import dagrun
from airflow_audience_provider.sandbox.dagrun import dag_test_env, migrate_db

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "example_dags"
#: Put first on PYTHONPATH of the tests' ``airflow dags test`` processes (its sitecustomize says why).
DAG_TEST_SITE = Path(__file__).resolve().parent / "dagtest_site"


class FakeClock:
    """A clock that only moves when something sleeps on it (or a test advances it)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def apt_install(package: str, found: Callable[[], Any]) -> Any:
    """``found()``; when it finds nothing and we are root, again after ``apt-get install -y <package>``
    (and ``apt-get update`` first if that failed): a clean CI machine may lack Debian's package."""
    result = found()
    if result or os.geteuid() != 0 or not shutil.which("apt-get"):
        return result
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", package]
    for command in (install, ["apt-get", "update", "-q"], install):
        subprocess.run(command, env=env, capture_output=True, timeout=600, check=False)
        result = found()
        if result:
            return result
    return None


def redis_server_binary() -> str | None:
    """Debian's ``redis-server``, installed with apt-get when missing and we are root; None if it cannot be."""
    return apt_install("redis-server", lambda: shutil.which("redis-server"))  # type: ignore[no-any-return]


def sha(email: str) -> str:
    """SHA-256 hex of an e-mail trimmed and lower-cased (what the vendors are sent)."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()


def documented_upload_keys(table: str) -> set[str]:
    """The keys of the upload result the contact-list guide lists in its table titled ``table``."""
    import re

    text = (REPO / "docs" / "guides" / "contact_lists.rst").read_text(encoding="utf-8")
    start = text.index(f".. list-table:: {table}\n")
    end = text.find(".. list-table::", start + 1)
    body = text[start : end if end != -1 else len(text)]
    keys = set(re.findall(r"^   \* - ``(\w+)``$", body, flags=re.MULTILINE))
    assert keys, f"no keys in the table {table!r}"
    return keys


def write_emails(path: Path, emails: list[str]) -> dict[str, str]:
    """A CSV export with an ``email`` column, as the upstream XCom dict the engine reads."""
    path.write_text("email\n" + "\n".join(emails) + "\n")
    return {"path": str(path), "format": "csv", "column": "email"}


def fast_hook(hook_class: type, *, own_limiter: bool = False) -> Iterator[Any]:
    """For a fixture: ``hook_class`` on its default connection with short retry waits (and, with
    ``own_limiter``, a private in-memory rate limiter), closed after the test."""
    made = hook_class(retry=RetryPolicy(backoff_initial=0.01, backoff_max=0.02))
    if own_limiter:
        made.get_conn().limiter = RateLimiter()
    yield made
    made.get_conn().close()


def conn_setter(fake: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``setter(conn_id, extra=..., **fields)``: point a connection id at ``fake`` with changed fields.

    A field or extra given as None is left out of the connection.
    """

    def setter(conn_id: str, *, extra: dict[str, Any] | None = None, **fields: Any) -> str:
        conn = fake.connection(fake.base_url)
        conn.update(fields)
        conn = {k: v for k, v in conn.items() if v is not None}
        merged = {**conn.get("extra", {}), **(extra or {})}
        conn["extra"] = {k: v for k, v in merged.items() if v is not None}
        monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))
        return conn_id

    return setter


def record_exchanges(monkeypatch: pytest.MonkeyPatch, hook_class: type, spec_check: Any) -> None:
    """Every ``hook_class`` the test builds (operators and sensors build their own) records its exchanges
    in ``spec_check``."""
    real = hook_class.build_transport

    def build_transport(self, settings):
        transport = real(self, settings)
        spec_check.attach(transport.session)
        return transport

    monkeypatch.setattr(hook_class, "build_transport", build_transport)


def checked_exchanges(monkeypatch: pytest.MonkeyPatch, hook_class: type, spec_check: Any) -> Iterator[Any]:
    """For an autouse fixture: every ``hook_class`` exchange of the test, validated by ``spec_check`` at
    teardown unless the test set ``spec_check.enabled = False`` (it breaks the document on purpose)."""
    record_exchanges(monkeypatch, hook_class, spec_check)
    spec_check.start("")
    spec_check.enabled = True
    yield spec_check
    if spec_check.enabled:
        spec_check.assert_valid()


_MIGRATED_DBS: dict[int, Path] = {}


def migrated_airflow_env(sandbox: Any, tmp_path_factory: pytest.TempPathFactory, **env: str) -> dict[str, str]:
    """The environment of ``airflow dags test`` on a fresh home with the example DAGs, its DB migrated.

    ``airflow db migrate`` runs once per session; each home gets a copy of that empty migrated DB
    (it holds nothing of its home) and writes its own ``airflow.cfg`` on first use. The processes
    run with :data:`DAG_TEST_SITE` on their ``PYTHONPATH``.
    """
    made = dag_test_env(tmp_path_factory.mktemp("airflow_home"), EXAMPLES, sandbox, **env)
    made["PYTHONPATH"] = os.pathsep.join(p for p in (str(DAG_TEST_SITE), made.get("PYTHONPATH")) if p)
    template = _MIGRATED_DBS.get(id(tmp_path_factory))
    if template is None:
        template_env = dag_test_env(tmp_path_factory.mktemp("airflow_home_migrated"), EXAMPLES)
        migrate_db(template_env)
        template = _MIGRATED_DBS[id(tmp_path_factory)] = Path(template_env["AIRFLOW_HOME"]) / "airflow.db"
    shutil.copyfile(template, Path(made["AIRFLOW_HOME"]) / "airflow.db")
    return made


def read_run(env: dict[str, str], dag_id: str) -> dict[str, Any]:
    """:func:`~airflow_audience_provider.sandbox.dagrun.read_run` in this process, which imports Airflow
    anyway: no interpreter start (some seconds of imports) per read."""
    return dagrun.read_run(env, dag_id, in_process=True)


def reset_fake(sandbox: Any, vendor: str, **config: Any) -> Iterator[Any]:
    """For a fixture: ``vendor``'s fake, reset (then configured with ``config``) before and reset after."""
    fake = sandbox.fake(vendor)
    fake.reset()
    if config:
        fake.configure(**config)
    yield fake
    fake.reset()


CRM_REFRESH_DAG = "example_yandex_audience_crm_refresh"


def audience_fake_state(fake: Any) -> dict[str, Any]:
    """What the Yandex.Audience fake holds now: its segments (also by id), their grantees, the processed ones."""
    segments = fake.segments()
    return {
        "segments": segments,
        "by_id": {s["id"]: s for s in segments},
        "grantees": {s["id"]: [g["user_login"] for g in fake.grants(s["id"])] for s in segments},
        "processed": fake.processed_segments(),
    }


def run_crm_refresh_twice(sandbox: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The Yandex.Audience CRM refresh example under ``airflow dags test``: a first run, then a run whose
    export shifted by five customers, in one fresh home against a freshly reset fake.

    Returns ``env`` and, for ``first`` and ``second``: the outcome, ``read_run`` right after it and
    :func:`audience_fake_state` right after it. The fake is reset again afterwards.
    """
    fake = sandbox.fake("yandex_audience")
    fake.reset()
    # Long enough that the sensor's first poke finds the segment still processing, so it really
    # defers (Airflow 3.1 starts tasks more slowly than 3.3).
    fake.configure(processing_seconds=4)
    env = migrated_airflow_env(
        sandbox,
        tmp_path_factory,
        AUDIENCE_EXAMPLE_POLL_SECONDS="0.3",
        # No scheduler under `airflow dags test`: the reschedule sensor need not keep 15 s between checks.
        AUDIENCE_EXAMPLE_RESCHEDULE_SECONDS="1",
        AUDIENCE_EXAMPLE_SETTLE_SECONDS="0.5",  # for the Lytics runs the Audiences view adds to this home
    )
    runs: dict[str, Any] = {"env": env}
    try:
        for name, conf in (("first", None), ("second", {"shift": 5})):
            outcome = dagrun.run_dag_test(CRM_REFRESH_DAG, env, timeout=300, conf=conf)
            runs[name] = {"outcome": outcome, "read": read_run(env, CRM_REFRESH_DAG), "fake": audience_fake_state(fake)}
            if not outcome.ok:
                break
    finally:
        fake.reset()
    return runs
