"""The ``airflow-audience-sandbox`` command: start, print connections, serve, stop on SIGTERM/SIGINT."""

from __future__ import annotations

import json
import os
import queue
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

READY = "SANDBOX READY"


def _start(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_audience_provider.sandbox.server", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _read_until_ready(proc: subprocess.Popen[str], timeout: float = 20.0) -> list[str]:
    """Collect stdout lines until READY (a reader thread: select() on a buffered pipe misses lines)."""
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line == READY:
            return seen
    proc.kill()
    raise AssertionError(f"no {READY!r}; stdout={seen} stderr={proc.stderr.read() if proc.stderr else ''}")


def _exports(lines: list[str]) -> dict[str, str]:
    result = {}
    for line in lines:
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            result[key] = shlex.split(value)[0]
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_cli_serves_until_signalled(tmp_path: Path, stop_signal: signal.Signals) -> None:
    env_file = tmp_path / "sandbox.env"
    proc = _start("--vendor", "lytics", "--processing-seconds", "0.2", "--env-file", str(env_file))
    try:
        lines = _read_until_ready(proc)
        exports = _exports(lines)
        assert set(exports) == {"AIRFLOW_CONN_LYTICS_DEFAULT"}
        conn = json.loads(exports["AIRFLOW_CONN_LYTICS_DEFAULT"])
        assert conn["conn_type"] == "lytics"
        assert env_file.read_text().splitlines() == [line for line in lines if line.startswith("export ")]

        headers = {"Authorization": conn["password"]}
        params = {"account_id": conn["extra"]["account_id"]}
        listed = requests.get(conn["host"] + "/v2/segment", headers=headers, params=params, timeout=5)
        assert listed.status_code == 200
        config = requests.get(conn["host"] + "/_sandbox/config", timeout=5).json()["config"]
        assert config["processing_seconds"] == 0.2
    finally:
        proc.send_signal(stop_signal)
        try:
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0
    with pytest.raises(requests.ConnectionError):
        requests.get(conn["host"] + "/_sandbox/health", timeout=2)


def _free_port_block(size: int) -> int:
    """A base port with ``size`` consecutive free ports (``--port-base`` serves vendor i on base + i)."""
    import random

    for _ in range(100):
        base = random.randint(20_000, 60_000)
        sockets = []
        try:
            for offset in range(size):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError("no block of free ports found")


def test_cli_fixed_ports(tmp_path: Path) -> None:
    from airflow_audience_provider.sandbox import available_vendors

    port = _free_port_block(len(available_vendors()))
    proc = _start("--port-base", str(port))
    try:
        conn = json.loads(_exports(_read_until_ready(proc))["AIRFLOW_CONN_LYTICS_DEFAULT"])
        assert conn["host"] == f"http://127.0.0.1:{port}"
        assert requests.get(conn["host"] + "/_sandbox/health", timeout=5).json()["vendor"] == "lytics"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert proc.returncode == 0


def test_cli_rejects_unknown_vendor() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "airflow_audience_provider.sandbox.server", "--vendor", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
