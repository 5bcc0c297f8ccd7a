"""Blocking calls made from coroutines (triggers), run in a worker thread.

The thread is started through asgiref's ``sync_to_async``, not ``asyncio.to_thread``: a blocking
call may reach the triggerer's supervisor (``mask_secret``, a connection or variable read), and the
Task SDK sends that request with ``async_to_sync``. From a ``sync_to_async`` thread the request runs
on the trigger runner's own event loop, behind its lock; from a plain thread Airflow 3.1 runs it on
a second event loop that reads the same socket, and the trigger runner dies with "Response read out
of order". Airflow 3.2+ sends from any thread safely, so this only matters on 3.1.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["to_thread"]

T = TypeVar("T")

_sync_to_async: Any = None


async def to_thread(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """Run ``func(*args, **kwargs)`` in a worker thread (not one shared thread) and return its result."""
    global _sync_to_async
    if _sync_to_async is None:
        # Imported off the loop (a first import blocks), and not at DAG parse; the import lock makes a
        # concurrent caller wait for the whole module, never see it half initialised.
        _sync_to_async = await asyncio.to_thread(_import_sync_to_async)
    return await _sync_to_async(functools.partial(func, *args, **kwargs), thread_sensitive=False)()


def _import_sync_to_async() -> Any:
    from asgiref.sync import sync_to_async

    return sync_to_async
