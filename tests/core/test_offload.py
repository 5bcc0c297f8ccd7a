"""core.offload.to_thread: blocking calls of triggers run in worker threads, and the Task SDK's
sync-to-supervisor requests made there run on the trigger runner's own event loop."""

from __future__ import annotations

import asyncio
import threading

from asgiref.sync import async_to_sync

from airflow_audience_provider.core.offload import to_thread


async def _running_loop() -> asyncio.AbstractEventLoop:
    return asyncio.get_running_loop()


def test_a_supervisor_request_from_the_thread_runs_on_the_callers_event_loop():
    # The Task SDK sends to the triggerer's supervisor with async_to_sync (Airflow 3.1); on another
    # loop that request would read the shared socket outside the runner's lock.
    def ask_supervisor() -> asyncio.AbstractEventLoop:
        # Built in the thread, as the SDK does: built on the loop's thread it would find that loop.
        return async_to_sync(_running_loop)()

    async def main() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        caller = asyncio.get_running_loop()
        seen = await to_thread(ask_supervisor)
        return caller, seen

    caller, seen = asyncio.run(main())
    assert seen is caller


def test_blocking_calls_run_off_the_loop_thread_and_concurrently():
    barrier = threading.Barrier(2, timeout=10)  # broken (an error) if the calls ran one after the other

    def blocking(tag: str) -> tuple[str, int]:
        barrier.wait()
        return tag, threading.get_ident()

    async def main() -> tuple[int, list[tuple[str, int]]]:
        results = await asyncio.gather(to_thread(blocking, "a"), to_thread(blocking, tag="b"))
        return threading.get_ident(), list(results)

    loop_thread, results = asyncio.run(main())
    assert [tag for tag, _ in results] == ["a", "b"]
    assert loop_thread not in {ident for _, ident in results}
    assert results[0][1] != results[1][1]


def test_exceptions_reach_the_caller():
    def fails() -> None:
        raise ValueError("bad input")

    async def main() -> None:
        await to_thread(fails)

    try:
        asyncio.run(main())
    except ValueError as exc:
        assert str(exc) == "bad input"
    else:
        raise AssertionError("the exception was swallowed")
