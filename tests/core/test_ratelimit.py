"""The client-side rate limiter, on a fake clock: windows, max_wait, the shared file ledger."""

from __future__ import annotations

import json
import os

import pytest

from airflow_audience_provider.core.ratelimit import QuotaWouldBlock, RateLimit, RateLimiter, Window


def limiter_on(clock, state_dir=None) -> RateLimiter:
    return RateLimiter(state_dir=state_dir, clock=clock, sleep=clock.sleep)


def test_window_allows_limit_then_waits_for_the_oldest_to_expire(clock):
    limiter = limiter_on(clock)
    limit = RateLimit((Window(2, 1.0),))
    assert limiter.acquire("k", limit) == 0.0
    clock.advance(0.25)
    assert limiter.acquire("k", limit) == 0.0
    waited = limiter.acquire("k", limit)
    assert waited == pytest.approx(0.75)  # the first stamp leaves the window 1 s after it was made
    assert clock.sleeps == [pytest.approx(0.75)]


def test_sliding_window_frees_slots_as_time_passes(clock):
    limiter = limiter_on(clock)
    limit = RateLimit.per_second(3)
    for _ in range(3):
        limiter.acquire("k", limit)
    clock.advance(1.0)
    for _ in range(3):
        assert limiter.acquire("k", limit) == 0.0
    assert clock.sleeps == []


def test_multiple_windows_the_strictest_decides(clock):
    limiter = limiter_on(clock)
    limit = RateLimit((Window(2, 1.0), Window(3, 10.0)), max_wait=60)
    waits = [limiter.acquire("k", limit) for _ in range(4)]
    # 3rd call: per-second window full -> 1 s; 4th: 3 per 10 s full -> until the first stamp is 10 s old
    assert waits == [0.0, 0.0, pytest.approx(1.0), pytest.approx(9.0)]
    assert clock.now - 1_000_000.0 == pytest.approx(10.0)


def test_keys_are_separate_budgets(clock):
    limiter = limiter_on(clock)
    limit = RateLimit((Window(1, 60.0),))
    limiter.acquire("account-a", limit)
    assert limiter.acquire("account-b", limit) == 0.0
    assert clock.sleeps == []


def test_quota_would_block_beyond_max_wait(clock):
    limiter = limiter_on(clock)
    limit = RateLimit((Window(1, 3600.0, "1 request per hour"),), max_wait=30)
    limiter.acquire("k", limit)
    with pytest.raises(QuotaWouldBlock) as caught:
        limiter.acquire("k", limit)
    assert caught.value.wait == pytest.approx(3600.0)
    assert caught.value.window.label == "1 request per hour"
    assert "1 request per hour" in str(caught.value)
    assert clock.sleeps == []  # refused at once, never slept


def test_file_ledger_is_shared_between_limiters(clock, tmp_path):
    limit = RateLimit((Window(2, 10.0),), max_wait=60)
    first = limiter_on(clock, tmp_path)
    second = limiter_on(clock, tmp_path)
    assert first.acquire("lytics:acct:size", limit) == 0.0
    assert second.acquire("lytics:acct:size", limit) == 0.0
    # both slots were used through two different limiters: the third waits
    assert first.acquire("lytics:acct:size", limit) == pytest.approx(10.0)
    # an in-memory limiter does not see the file's budget
    assert limiter_on(clock).acquire("lytics:acct:size", limit) == 0.0


def test_file_ledger_names_do_not_reveal_the_key(clock, tmp_path):
    limiter_on(clock, tmp_path).acquire("lytics:secret-account:default", RateLimit.per_second(5))
    names = os.listdir(tmp_path)
    assert len(names) == 1
    assert "secret-account" not in names[0]
    stored = json.loads((tmp_path / names[0]).read_text())
    assert stored == {"0": [clock.now]}


def test_torn_ledger_file_starts_fresh(clock, tmp_path):
    limiter = limiter_on(clock, tmp_path)
    limit = RateLimit((Window(1, 10.0),))
    limiter.acquire("k", limit)
    (ledger,) = tmp_path.iterdir()
    ledger.write_text('{"0": [12')  # a writer killed mid-write
    assert limiter.acquire("k", limit) == 0.0


def test_file_ledger_is_shared_across_processes(tmp_path):
    """Two processes on one state dir draw from one budget (fcntl-locked file)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from airflow_audience_provider.core.ratelimit import QuotaWouldBlock, RateLimiter, RateLimit, Window\n"
        "limiter = RateLimiter(Path(sys.argv[1]))\n"
        "try:\n"
        "    limiter.acquire('shared', RateLimit((Window(1, 3600.0),), max_wait=10))\n"
        "    print('acquired')\n"
        "except QuotaWouldBlock as exc:\n"
        "    print(f'blocked {exc.wait:.0f}')\n"
    )
    outputs = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True, timeout=60
        ).stdout.strip()
        for _ in range(2)
    ]
    assert outputs[0] == "acquired"
    verdict, wait = outputs[1].split()
    assert verdict == "blocked"
    assert 3000 < int(wait) <= 3600  # the slot the first process took, minus the time in between
