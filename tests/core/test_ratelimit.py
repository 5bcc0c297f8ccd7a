"""The client-side rate limiter, on a fake clock: windows, max_wait, the shared file ledger, several
budgets at once, holds and the choice of backend (the Redis backend: test_ratelimit_redis.py)."""

from __future__ import annotations

import json
import os

import pytest

from airflow_audience_provider.core.ratelimit import (
    HOLD,
    Budget,
    MemoryBackend,
    QuotaWouldBlock,
    RateLimit,
    RateLimiter,
    RedisBackend,
    Window,
    limiter_from_setting,
)


def limiter_on(clock, state_dir=None) -> RateLimiter:
    return RateLimiter(state_dir=state_dir, clock=clock, sleep=clock.sleep)


def test_window_allows_limit_then_waits_for_the_oldest_to_expire(clock):
    limiter = limiter_on(clock)
    limit = RateLimit((Window(2, 1.0),))
    assert limiter.acquire("k", limit) == 0.0
    clock.advance(0.25)
    assert limiter.acquire("k", limit) == 0.0
    waited = limiter.acquire("k", limit)
    # the first stamp leaves the window 1 s after it was made, plus the margin (20 ms on 1 s)
    assert waited == pytest.approx(0.77)
    assert clock.sleeps == [pytest.approx(0.77)]


def test_sliding_window_frees_slots_as_time_passes(clock):
    limiter = limiter_on(clock)
    limit = RateLimit.per_second(3)
    for _ in range(3):
        limiter.acquire("k", limit)
    clock.advance(Window(3, 1.0).span)
    for _ in range(3):
        assert limiter.acquire("k", limit) == 0.0
    assert clock.sleeps == []


def test_multiple_windows_the_strictest_decides(clock):
    limiter = limiter_on(clock)
    limit = RateLimit((Window(2, 1.0), Window(3, 10.0)), max_wait=60)
    waits = [limiter.acquire("k", limit) for _ in range(4)]
    # 3rd call: per-second window full -> 1.02 s; 4th: 3 per 10 s full -> until the first stamp is 10.2 s old
    assert waits == [0.0, 0.0, pytest.approx(1.02), pytest.approx(9.18)]
    assert clock.now - 1_000_000.0 == pytest.approx(10.2)


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
    assert caught.value.wait == pytest.approx(3600.25)  # the hour plus the largest margin
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
    assert first.acquire("lytics:acct:size", limit) == pytest.approx(10.2)
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


def test_a_removed_ledger_file_is_reopened_and_shared(clock, tmp_path):
    """The backend keeps each ledger open; a file removed meanwhile is recreated by name, not kept as an orphan."""
    limit = RateLimit((Window(1, 10.0),), max_wait=60)
    first, second = limiter_on(clock, tmp_path), limiter_on(clock, tmp_path)
    assert first.acquire("k", limit) == 0.0
    (ledger,) = tmp_path.iterdir()
    ledger.unlink()  # e.g. someone cleaned the directory: the budget starts again
    assert first.acquire("k", limit) == 0.0
    assert second.acquire("k", limit) == pytest.approx(10.2)  # the slot the first took in the new file


def test_a_shorter_ledger_is_padded_in_place(clock, tmp_path):
    limiter = limiter_on(clock, tmp_path)
    limiter.hold("k", 30.0)
    (ledger,) = tmp_path.iterdir()
    size, inode = ledger.stat().st_size, ledger.stat().st_ino
    limiter.hold("k", 0.0)  # lifted: a shorter ledger over the longer one
    assert ledger.stat().st_size == size and ledger.stat().st_ino == inode
    assert ledger.read_bytes().endswith(b" ") and json.loads(ledger.read_text()) == {}
    assert limiter.acquire("k", RateLimit.per_second(1)) == 0.0


def test_a_dropped_file_backend_closes_its_ledgers(clock, tmp_path):
    import gc

    limiter = limiter_on(clock, tmp_path)
    limiter.acquire("k", RateLimit.per_second(5))
    (fd,) = limiter.backend._fds.values()
    (ledger,) = tmp_path.iterdir()
    assert os.fstat(fd).st_ino == ledger.stat().st_ino  # open while the backend lives
    del limiter
    gc.collect()
    try:
        reused = os.fstat(fd).st_ino  # the number may have been given to another file since
    except OSError:
        reused = None
    assert reused != ledger.stat().st_ino


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_locks_the_ledger_through_its_own_descriptor(clock, tmp_path):
    """A child's copy of the parent's descriptor would share the parent's lock: the child reopens the file."""
    import fcntl

    limiter = limiter_on(clock, tmp_path)
    backend = limiter.backend
    limiter.acquire("k", RateLimit.per_second(5))
    with backend._locked(["k"]):  # the parent holds the lock
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                fcntl.flock(backend._open("k"), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


# -- several budgets at once: all or none ---------------------------------------------------------


def test_a_refusing_budget_takes_no_slot_in_the_others(clock):
    limiter = limiter_on(clock)
    hourly, short = Window(1, 3600.0), Window(1, 10.0)
    limiter.acquire_all([Budget("b", (short,))], max_wait=5)  # someone else used the short budget
    with pytest.raises(QuotaWouldBlock):
        limiter.acquire_all([Budget("a", (hourly,)), Budget("b", (short,))], max_wait=5)
    clock.advance(short.span)
    # "a" was never used: the refused request above must not have spent its only slot
    assert limiter.acquire_all([Budget("a", (hourly,)), Budget("b", (short,))], max_wait=5) == 0.0


def test_a_waiting_request_takes_its_slots_together_when_it_goes(clock, tmp_path):
    limiter = limiter_on(clock, tmp_path)
    limiter.acquire_all([Budget("b", (Window(1, 2.0),))], max_wait=5)
    waited = limiter.acquire_all([Budget("a", (Window(5, 60.0),)), Budget("b", (Window(1, 2.0),))], max_wait=5)
    assert waited == pytest.approx(2.04)
    stored = {json.loads(p.read_text())["0"][-1] for p in tmp_path.iterdir()}
    assert stored == {clock.now}  # both stamps are the moment it was sent, not when it started waiting


def test_shared_scope_leak_is_fixed_in_the_transport(lytics_sandbox, make_transport, clock):
    """A request refused by a shared budget leaves no slot used in its own class' budget."""
    from airflow_audience_provider.core.errors import AudienceRateLimitError
    from airflow_audience_provider.core.transport import VendorProfile

    per_ip = Window(1, 10.0, "1 request per 10 s per IP", scope="ip", per_account=False)
    profile = VendorProfile(
        name="lytics",
        rate_limits={"read": RateLimit((Window(1, 3600.0, "1 read per hour per account"), per_ip), max_wait=5)},
    )
    limiter = RateLimiter(clock=clock, sleep=clock.sleep)
    one = make_transport(profile=profile, limiter=limiter, budget_key="acct-1")
    two = make_transport(profile=profile, limiter=limiter, budget_key="acct-2")
    one.request("GET", "/v2/segment", endpoint_class="read")
    with pytest.raises(AudienceRateLimitError, match="per IP"):
        two.request("GET", "/v2/segment", endpoint_class="read")  # the per-IP budget refuses
    clock.advance(10)
    # acct-2 never sent a read: its hourly budget is untouched, so this goes at once
    assert two.request("GET", "/v2/segment", endpoint_class="read").status_code == 200


# -- holds: the vendor says a budget is used up ---------------------------------------------------


def test_a_hold_makes_the_next_request_wait_until_it_ends(clock):
    limiter = limiter_on(clock)
    limit = RateLimit((Window(100, 60.0),))
    limiter.hold("k", 7.5)
    assert limiter.acquire("k", limit) == pytest.approx(7.5)
    assert limiter.acquire("k", limit) == 0.0  # the hold has passed
    limiter.hold("k", 30)
    limiter.hold("k", 0)  # the vendor reports budget left again: the hold is lifted
    assert limiter.acquire("k", limit) == 0.0


def test_a_hold_longer_than_max_wait_refuses_and_is_shared_through_files(clock, tmp_path):
    limiter_on(clock, tmp_path).hold("k", 120)
    with pytest.raises(QuotaWouldBlock) as caught:
        limiter_on(clock, tmp_path).acquire("k", RateLimit((Window(5, 1.0),), max_wait=60))
    assert caught.value.window is HOLD and caught.value.wait == pytest.approx(120)
    assert "used up" in str(caught.value)


# -- choosing the backend -------------------------------------------------------------------------


def test_backend_setting_chooses_the_ledger(tmp_path, monkeypatch):
    from airflow_audience_provider.core import ratelimit
    from airflow_audience_provider.core.errors import AudienceConfigurationError

    assert isinstance(limiter_from_setting("memory").backend, MemoryBackend)
    assert limiter_from_setting(f"file://{tmp_path}").backend.state_dir == tmp_path
    assert limiter_from_setting(str(tmp_path / "x")).backend.state_dir == tmp_path / "x"
    redis_limiter = limiter_from_setting("redis://:hunter2@127.0.0.1:1/0")
    assert isinstance(redis_limiter.backend, RedisBackend)
    assert "hunter2" not in repr(redis_limiter.backend)
    with pytest.raises(AudienceConfigurationError, match="unknown backend"):
        limiter_from_setting("s3://bucket/ratelimits")
    monkeypatch.setenv("AUDIENCE_RATELIMIT_DIR", str(tmp_path / "dir"))
    assert limiter_from_setting(None).backend.state_dir == tmp_path / "dir"
    assert limiter_from_setting("file").backend.state_dir == tmp_path / "dir"
    monkeypatch.delenv("AUDIENCE_RATELIMIT_DIR")
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "home"))
    assert limiter_from_setting(None).backend.state_dir == tmp_path / "home" / "audience_ratelimits"
    # Without AIRFLOW_HOME, Airflow's own default home: task processes of one host still share budgets.
    monkeypatch.delenv("AIRFLOW_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert limiter_from_setting(None).backend.state_dir == tmp_path / "user" / "airflow" / "audience_ratelimits"
    monkeypatch.setenv("AUDIENCE_RATELIMIT_DIR", "")
    assert isinstance(limiter_from_setting(None).backend, MemoryBackend)
    monkeypatch.setenv("AIRFLOW__AUDIENCE__RATE_LIMIT_BACKEND", "memory")
    monkeypatch.setattr(ratelimit, "_default_limiter", None)
    assert isinstance(ratelimit.default_rate_limiter().backend, MemoryBackend)
