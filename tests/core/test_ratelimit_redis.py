"""The Redis rate-limit backend against a real ``redis-server`` on a loopback port.

Debian's ``redis-server`` is installed with apt-get when it is missing (CI runs as root); the
tests are skipped, saying why, only if it cannot be installed. The last test is the one that
matters for distributed executors: two worker processes with separate local state hammer one
vendor account of the sandbox, and the sandbox, not the clients, counts what arrived.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

redis = pytest.importorskip("redis", reason="the redis package (the 'redis' extra) is not installed")

from helpers import free_port, redis_server_binary  # noqa: E402

from airflow_audience_provider.core.ratelimit import (  # noqa: E402
    HOLD,
    Budget,
    QuotaWouldBlock,
    RateLimit,
    RateLimiter,
    RedisBackend,
    Window,
    limiter_from_setting,
)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    """A private ``redis-server`` on 127.0.0.1 (no persistence), stopped after the module."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("redis-server is not installed and could not be installed with apt-get (needs root)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("redis-server did not start") from None
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=20)


@pytest.fixture
def flushed(redis_url) -> str:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    client.close()
    return redis_url


def test_window_on_redis_and_refusal_without_sleeping(flushed):
    limiter = limiter_from_setting(flushed)
    assert isinstance(limiter.backend, RedisBackend)
    limit = RateLimit((Window(3, 30.0, "3 per 30 s"),), max_wait=5)
    assert [limiter.acquire("acct", limit) for _ in range(3)] == [0.0, 0.0, 0.0]
    with pytest.raises(QuotaWouldBlock) as caught:
        limiter.acquire("acct", limit)
    assert 25 < caught.value.wait <= 30.25 and caught.value.window.label == "3 per 30 s"
    assert limiter.acquire("other-acct", limit) == 0.0  # another key, another budget


def test_limiters_in_one_redis_share_the_budget_and_wait_for_a_slot(flushed):
    limit = RateLimit((Window(2, 0.5),), max_wait=5)
    first, second = limiter_from_setting(flushed), limiter_from_setting(flushed)
    assert first.acquire("shared", limit) == 0.0
    assert second.acquire("shared", limit) == 0.0
    waited = second.acquire("shared", limit)  # both slots taken, one by each limiter: it waits
    assert 0 < waited <= Window(2, 0.5).span


def test_several_budgets_on_redis_are_taken_all_or_none(flushed):
    limiter = limiter_from_setting(flushed)
    limiter.acquire_all([Budget("ip", (Window(1, 30.0),))], max_wait=1)
    with pytest.raises(QuotaWouldBlock):
        limiter.acquire_all([Budget("acct", (Window(1, 3600.0),)), Budget("ip", (Window(1, 30.0),))], max_wait=1)
    # "acct" kept its only slot: a request that only needs it goes at once
    assert limiter.acquire_all([Budget("acct", (Window(1, 3600.0),))], max_wait=1) == 0.0


def test_holds_on_redis_reach_every_limiter(flushed):
    one, two = limiter_from_setting(flushed), limiter_from_setting(flushed)
    one.hold("segment:token:get_audience", 120)
    with pytest.raises(QuotaWouldBlock) as caught:
        two.acquire_all([Budget("segment:token:get_audience")], max_wait=60)
    assert caught.value.window is HOLD and 110 < caught.value.wait <= 120
    one.hold("segment:token:get_audience", 0)
    assert two.acquire_all([Budget("segment:token:get_audience")], max_wait=60) == 0.0


def test_redis_keys_reveal_no_account_and_expire(flushed):
    limiter_from_setting(flushed).acquire(
        "criteo:https://api.example|client-id-secretive:default", RateLimit.per_second(5)
    )
    client = redis.Redis.from_url(flushed, decode_responses=True)
    keys = client.keys("*")
    assert len(keys) == 1 and keys[0].startswith("{audience-ratelimit}:")
    assert "secretive" not in keys[0]
    assert 0 < client.pttl(keys[0]) <= 2020  # a one-second window (and its margin) is kept about two seconds
    client.close()


def test_unreachable_redis_falls_back_to_this_process_with_a_warning(caplog):
    url = f"redis://:not-in-logs@127.0.0.1:{free_port()}/0"  # nothing listens there
    limiter = RateLimiter(backend=RedisBackend(url))
    limit = RateLimit((Window(1, 60.0),), max_wait=0.5)
    assert limiter.acquire("k", limit) == 0.0  # the request goes ahead...
    with pytest.raises(QuotaWouldBlock):
        limiter.acquire("k", limit)  # ...and this process still keeps its own budget
    assert "cannot be reached" in caplog.text
    assert "not-in-logs" not in caplog.text
    assert caplog.text.count("cannot be reached") == 1  # at most one warning a minute


# -- two worker processes, one vendor account, counted at the sandbox ------------------------------

WORKER = textwrap.dedent(
    """
    import sys

    from airflow_audience_provider.hooks.yandex_audience import YandexAudienceHook

    hook = YandexAudienceHook()
    hook.get_conn()
    print("ready", flush=True)
    sys.stdin.readline()  # wait until every worker is ready, so they hammer at the same time
    for _ in range(int(sys.argv[1])):
        hook.list_segments()
    print("done", hook.get_conn().requests_sent, flush=True)
    """
)

#: Yandex.Audience documents 30 requests per second per IP; every worker here shares one IP.
LIMIT = 30
CALLS_PER_WORKER = 45
#: Arrival times at the sandbox differ from the clients' send times by the loopback latency, which
#: varies between requests; the peak is measured over a window this much shorter than the limit's.
LATENCY_ALLOWANCE = 0.2


def _wait_for_ready(worker: subprocess.Popen, timeout: float = 120) -> None:
    """Read the worker's stdout up to its "ready" line (Airflow may log before it), within a deadline."""
    deadline = time.monotonic() + timeout
    seen = ""
    while "ready" not in seen.splitlines():
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([worker.stdout], [], [], left)[0]:
            worker.kill()
            raise AssertionError(f"worker not ready within {timeout} s: {worker.communicate()[1][-3000:]}")
        chunk = os.read(worker.stdout.fileno(), 65536)  # raw reads: nothing waits in a Python buffer
        if not chunk:  # the worker ended before it was ready
            raise AssertionError(worker.communicate()[1][-3000:])
        seen += chunk.decode("utf-8", "replace")


def _hammer(fake, tmp_path: Path, backend_of: list[str]) -> list[str]:
    """Run one worker process per backend setting, each with its own AIRFLOW_HOME; start them together.

    The fake only counts here: its own per-IP limit is off, so nothing is refused or retried.
    """
    fake.configure(requests_per_second_per_ip=None)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = []
    for index, backend in enumerate(backend_of):
        home = tmp_path / f"worker-{index}"
        home.mkdir()
        env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__AUDIENCE__RATE_LIMIT_BACKEND": backend}
        env.pop("AUDIENCE_RATELIMIT_DIR", None)
        workers.append(
            subprocess.Popen(
                [sys.executable, str(script), str(CALLS_PER_WORKER)],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for worker in workers:
            _wait_for_ready(worker)
        for worker in workers:
            worker.stdin.write("go\n")
            worker.stdin.flush()
        outputs = []
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err[-3000:]
            outputs.append(out.strip().splitlines()[-1])  # Airflow may log to stdout before
        return outputs
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()


@pytest.mark.slow
def test_two_workers_on_separate_hosts_stay_within_the_vendor_limit_through_redis(
    flushed, yandex_audience_sandbox, tmp_path
):
    outputs = _hammer(yandex_audience_sandbox, tmp_path, [flushed, flushed])
    assert all(out.startswith("done") for out in outputs)
    window = 1.0 - LATENCY_ALLOWANCE
    rates = yandex_audience_sandbox.request_rates(window)
    assert rates["total"]["requests"] >= 2 * CALLS_PER_WORKER
    assert rates["total"]["peak"] <= LIMIT, rates
    # they did hammer: over two seconds together they sent close to twice the per-second limit
    assert yandex_audience_sandbox.request_rates(2.0)["total"]["peak"] > LIMIT


@pytest.mark.slow
def test_without_a_shared_backend_two_hosts_exceed_the_limit(yandex_audience_sandbox, tmp_path):
    """The control: host-local file budgets (the default) on two hosts do not add up to one limit.

    This is what the sandbox's count is for; if it passed, the test above would prove nothing.
    """
    _hammer(yandex_audience_sandbox, tmp_path, ["file", "file"])  # each worker's own $AIRFLOW_HOME/audience_ratelimits
    rates = yandex_audience_sandbox.request_rates(1.0 - LATENCY_ALLOWANCE)
    assert rates["total"]["peak"] > LIMIT, rates
