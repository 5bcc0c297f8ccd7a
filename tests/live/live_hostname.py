"""``[core] hostname_callable`` of the live test's Celery workers: both run on one machine, so each
reports the name the harness gave it (``AUDIENCE_LIVE_WORKER_HOSTNAME``) as the task instances' hostname."""

from __future__ import annotations

import os
import socket


def worker_hostname() -> str:
    return os.environ.get("AUDIENCE_LIVE_WORKER_HOSTNAME") or socket.getfqdn()
