"""Serve the vendor fakes on local ports: :class:`SandboxServer` and the ``airflow-audience-sandbox`` command.

Each vendor fake runs on its own uvicorn server in a background thread, so tests in the main
thread can talk to it over real HTTP and also reach into its state through :meth:`SandboxServer.fake`.

Command line::

    airflow-audience-sandbox [--vendor lytics ...] [--port-base 8700] [--processing-seconds 5]
                             [--host 127.0.0.1] [--env-file sandbox.env]

prints one ``export AIRFLOW_CONN_<ID>='<json>'`` line per vendor, then ``SANDBOX READY``, and
serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from airflow_audience_provider.sandbox import available_vendors, load_fake_class

if TYPE_CHECKING:
    import uvicorn

    from airflow_audience_provider.sandbox.base import VendorFake

__all__ = ["SandboxServer", "main"]

_START_TIMEOUT = 10.0


class SandboxServer:
    """Run vendor fakes over HTTP on ``host``, one uvicorn server (and thread) per vendor.

    :param vendors: vendor names (default: every available fake).
    :param host: interface to bind; keep the default loopback address.
    :param ports: fixed port per vendor; missing or ``0`` = a free port picked by the OS.
    :param processing_seconds: initial asynchronous processing delay of every fake
        (default: each fake's own default).

    Use as a context manager or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        vendors: list[str] | None = None,
        host: str = "127.0.0.1",
        ports: dict[str, int] | None = None,
        processing_seconds: float | None = None,
    ) -> None:
        names = list(vendors) if vendors else available_vendors()
        self.host = host
        self._ports_wanted = dict(ports or {})
        self._fakes: dict[str, VendorFake] = {}
        for name in names:
            fake_class = load_fake_class(name)
            self._fakes[name] = fake_class(processing_seconds=processing_seconds)
        self._servers: dict[str, uvicorn.Server] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._ports: dict[str, int] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SandboxServer:
        """Start every fake and wait until each accepts connections. Returns ``self``."""
        import uvicorn

        try:
            for name, fake in self._fakes.items():
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, int(self._ports_wanted.get(name) or 0)))
                port = sock.getsockname()[1]
                self._ports[name] = port
                fake.base_url = f"http://{self.host}:{port}"
                config = uvicorn.Config(
                    fake.create_app(),
                    log_level="warning",
                    access_log=False,
                    lifespan="off",
                    proxy_headers=False,
                    server_header=False,
                    timeout_graceful_shutdown=1,
                )
                server = uvicorn.Server(config)
                thread = threading.Thread(
                    target=server.run, kwargs={"sockets": [sock]}, name=f"sandbox-{name}", daemon=True
                )
                self._servers[name] = server
                self._threads[name] = thread
                thread.start()
            for name in self._fakes:
                self._wait_ready(name)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, name: str) -> None:
        server, thread = self._servers[name], self._threads[name]
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if not thread.is_alive():
                raise RuntimeError(f"sandbox {name}: server thread exited during start-up")
            if server.started:
                try:
                    with socket.create_connection((self.host, self._ports[name]), timeout=1):
                        return
                except OSError:
                    pass
            time.sleep(0.01)
        raise RuntimeError(f"sandbox {name}: not accepting connections after {_START_TIMEOUT:.0f}s")

    def stop(self) -> None:
        """Stop every server and wait for its thread (idempotent)."""
        for server in self._servers.values():
            server.should_exit = True
        for thread in self._threads.values():
            thread.join(timeout=_START_TIMEOUT)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ access
    @property
    def vendors(self) -> list[str]:
        """Names of the served vendors."""
        return list(self._fakes)

    def fake(self, vendor: str) -> VendorFake:
        """The fake object of ``vendor``, for direct state manipulation in tests."""
        try:
            return self._fakes[vendor]
        except KeyError:
            raise KeyError(f"vendor {vendor!r} is not served; served: {', '.join(self._fakes)}") from None

    def port(self, vendor: str) -> int:
        """Port ``vendor`` listens on (after :meth:`start`)."""
        self.fake(vendor)
        if vendor not in self._ports:
            raise RuntimeError("the sandbox is not started")
        return self._ports[vendor]

    def url(self, vendor: str) -> str:
        """Base URL of ``vendor``'s fake, e.g. ``http://127.0.0.1:54321``."""
        return f"http://{self.host}:{self.port(vendor)}"

    def connections(self) -> dict[str, str]:
        """``{conn_id: json}``: ready values for ``AIRFLOW_CONN_<CONN_ID>`` per served vendor."""
        return {fake.conn_id: json.dumps(fake.connection(self.url(name))) for name, fake in self._fakes.items()}

    def env(self) -> dict[str, str]:
        """``{"AIRFLOW_CONN_<CONN_ID>": json}`` for every served vendor."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in self.connections().items()}

    def export_lines(self) -> list[str]:
        """Shell lines ``export AIRFLOW_CONN_<ID>='<json>'``."""
        return [f"export {key}={shlex.quote(value)}" for key, value in self.env().items()]

    def reset(self) -> None:
        """Reset every fake (state, faults, request log, configuration)."""
        for fake in self._fakes.values():
            fake.reset()


# ---------------------------------------------------------------------- command line
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    vendors = available_vendors()
    parser = argparse.ArgumentParser(
        prog="airflow-audience-sandbox",
        description="Serve fake vendor APIs on local ports and print ready AIRFLOW_CONN_* values.",
    )
    parser.add_argument(
        "--vendor",
        action="append",
        choices=vendors,
        help="vendor to serve (repeatable; default: all of %(choices)s)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default %(default)s)")
    parser.add_argument(
        "--port-base",
        type=int,
        default=None,
        help="fixed ports: vendor number i (in the order above) listens on PORT_BASE + i; default: free ports",
    )
    parser.add_argument(
        "--processing-seconds",
        type=float,
        default=None,
        help="how long asynchronous vendor work (e.g. segment reevaluation) takes",
    )
    parser.add_argument("--env-file", type=Path, default=None, help="also write the export lines to this file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``airflow-audience-sandbox``: serve until SIGINT/SIGTERM."""
    args = _parse_args(argv)
    all_vendors = available_vendors()
    vendors = list(dict.fromkeys(args.vendor)) if args.vendor else all_vendors
    ports: dict[str, int] = {}
    if args.port_base is not None:
        ports = {name: args.port_base + all_vendors.index(name) for name in vendors}

    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, _on_signal)

    sandbox = SandboxServer(vendors=vendors, host=args.host, ports=ports, processing_seconds=args.processing_seconds)
    try:
        sandbox.start()
    except (OSError, RuntimeError) as exc:
        print(f"sandbox: could not start: {exc}", file=sys.stderr)
        return 1
    try:
        lines = sandbox.export_lines()
        for name in sandbox.vendors:
            print(f"# {name}: {sandbox.url(name)}  (control API: {sandbox.url(name)}/_sandbox/...)")
        for line in lines:
            print(line)
        if args.env_file is not None:
            args.env_file.write_text("".join(f"{line}\n" for line in lines))
        print("SANDBOX READY", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        sandbox.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("sandbox stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
