"""Release check: build the sdist and wheel, install the wheel into a fresh virtual environment
(Airflow from the committed lock), and use it from there: ``airflow providers list`` lists the
provider, and an example DAG runs with ``airflow dags test`` against the sandbox.

Needs uv (``make env`` puts it in ``.tools/bin``; ``uv`` on PATH or ``$UV`` also work); skipped without it.
Marked ``slow``: ``pytest -m "not slow"`` leaves it out.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from airflow_audience_provider.sandbox.dagrun import dag_test_env, migrate_db, read_run, run_dag_test

REPO = Path(__file__).resolve().parent.parent
LOCK = REPO / "requirements" / "ci.lock"
EXAMPLES = REPO / "example_dags"
DIST_NAME = "airflow-audience-provider"
DAG_ID = "example_lytics_segment_refresh"

pytestmark = [pytest.mark.slow, pytest.mark.dag_run]


def _uv() -> str | None:
    for candidate in (os.environ.get("UV"), str(REPO / ".tools" / "bin" / "uv"), shutil.which("uv")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _venv_env(env: dict[str, str]) -> dict[str, str]:
    """The fresh venv has no bytecode (uv does not compile it): let its first Airflow process write it,
    so the later ones start faster; and keep the checkout off PYTHONPATH so the wheel is what runs."""
    env = dict(env)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPATH", None)
    return env


def _run(command: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
    output = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert done.returncode == 0, f"{command} failed (rc={done.returncode}):\n{output}"
    return done


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """``python -m build --no-isolation`` (what ``make dist`` runs): the sdist, then the wheel built from it."""
    for module in ("build", "setuptools", "wheel"):  # in ci.lock; not in every lock (oldest.lock)
        pytest.importorskip(module, reason=f"{module} is not installed in this environment")
    outdir = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), str(REPO)], timeout=180, cwd=REPO)
    wheels, sdists = list(outdir.glob("*.whl")), list(outdir.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in outdir.iterdir())
    return {"wheel": wheels[0], "sdist": sdists[0]}


@pytest.fixture(scope="module")
def wheel_venv(dists, tmp_path_factory) -> Path:
    """A new venv: the lock synced, then the wheel alone (``--no-deps``, so the lock decides every version)."""
    uv = _uv()
    if uv is None:
        pytest.skip("uv not found (.tools/bin/uv, uv on PATH or $UV): run `make env` first")
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    _run([uv, "venv", "-q", "-p", sys.executable, str(venv)], timeout=120)
    python = str(venv / "bin" / "python")
    _run([uv, "pip", "sync", "-q", "-p", python, str(LOCK)], timeout=300)
    _run([uv, "pip", "install", "-q", "-p", python, "--no-deps", str(dists["wheel"])], timeout=120)
    return venv


def test_wheel_contents(dists):
    names = set(zipfile.ZipFile(dists["wheel"]).namelist())
    assert "airflow_audience_provider/py.typed" in names
    assert "airflow_audience_provider/connections.py" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    text = zipfile.ZipFile(dists["wheel"]).read(entry_points).decode()
    assert "[apache_airflow_provider]" in text
    assert "provider_info = airflow_audience_provider:get_provider_info" in text
    # the Audiences view: its plugin registered, its app shipped
    assert "[airflow.plugins]" in text and "audiences = airflow_audience_provider.ui.plugin:AudiencesPlugin" in text
    assert "airflow_audience_provider/ui/app.py" in names
    # every vendor registered for the provider info ships its modules
    from airflow_audience_provider.connections import CONNECTION_SPECS

    for spec in CONNECTION_SPECS.values():
        for kind in spec.module_kinds:
            assert f"airflow_audience_provider/{kind}/{spec.module_name}.py" in names, (spec.conn_type, kind)
    assert not any(n.startswith("tests/") for n in names)


def test_installed_wheel_is_used_not_the_checkout(wheel_venv, tmp_path):
    # cwd outside the repository, so the checkout is not on sys.path
    done = _run(
        [str(wheel_venv / "bin" / "python"), "-c", "import airflow_audience_provider as p; print(p.__file__)"],
        timeout=60,
        cwd=tmp_path,
    )
    location = Path(done.stdout.strip().splitlines()[-1]).resolve()
    assert location.is_relative_to(wheel_venv.resolve()), location
    assert "site-packages" in location.parts


def test_airflow_providers_list_from_the_wheel(wheel_venv, tmp_path):
    env = _venv_env(dag_test_env(tmp_path / "airflow_home", EXAMPLES))
    done = _run([str(wheel_venv / "bin" / "airflow"), "providers", "list"], timeout=180, env=env, cwd=tmp_path)
    listed = [line for line in done.stdout.splitlines() if DIST_NAME in line]
    assert listed, done.stdout[-3000:]
    assert "0.1.0" in listed[0] or "Audience" in listed[0], listed


def test_example_dag_runs_from_the_wheel(wheel_venv, tmp_path):
    from airflow_audience_provider.sandbox.server import SandboxServer

    airflow_bin = str(wheel_venv / "bin" / "airflow")
    with SandboxServer(vendors=["lytics"], processing_seconds=0.5) as sandbox:
        env = _venv_env(
            dag_test_env(
                tmp_path / "airflow_home",
                EXAMPLES,
                sandbox,
                AUDIENCE_EXAMPLE_POLL_SECONDS="0.3",
                # the fake lists no reevaluation job: the size counts as settled after equal readings 1 s apart
                AUDIENCE_EXAMPLE_SETTLE_SECONDS="1",
            )
        )
        migrate_db(env, timeout=180, airflow_bin=airflow_bin)
        outcome = run_dag_test(DAG_ID, env, timeout=240, airflow_bin=airflow_bin)
        assert outcome.ok, outcome.log[-4000:]
        run = read_run(env, DAG_ID)["runs"][-1]
    assert run["state"] == "success"
    assert {task: value["state"] for task, value in run["tasks"].items()} == dict.fromkeys(
        ["ensure_group", "upsert_segment", "reevaluate", "wait_for_reevaluation", "report"], "success"
    )
