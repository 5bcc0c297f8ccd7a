"""Segment's "budget used up" header is a rate-limiter hold: every hook on the same token waits it out."""

from __future__ import annotations

import time

import pytest

from airflow_audience_provider.core.errors import AudienceRateLimitError
from airflow_audience_provider.core.ratelimit import RateLimiter
from airflow_audience_provider.core.transport import RetryPolicy
from airflow_audience_provider.hooks.segment import SegmentHook

SEED = "aud_sandboxSeedAudience000000001"


def hooks_on(limiter: RateLimiter, count: int, **kwargs) -> list[SegmentHook]:
    made = []
    for _ in range(count):
        hook = SegmentHook(**kwargs)
        hook.get_conn().limiter = limiter
        hook.get_conn().profile.rate_limits.clear()  # no client-side windows: only Segment's headers
        made.append(hook)
    return made


def test_another_hook_on_the_same_token_waits_for_the_reset_instead_of_collecting_a_429(segment):
    segment.configure(limit_get_audience=2, rate_window_seconds=1)
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    first, second = hooks_on(RateLimiter(sleep=sleep), 2, retry=RetryPolicy(backoff_initial=0.01))
    first.get_audience(SEED)
    first.get_audience(SEED)  # Segment answers X-RateLimit-Remaining: 0
    second.get_audience(SEED)  # another task of the worker learns it from the limiter and waits
    assert [r["status"] for r in segment.requests] == [200, 200, 200]
    assert len(slept) == 1 and 0 < slept[0] <= 2.0
    second.list_audiences()  # another operation's budget is not held
    assert len(slept) == 1


def test_a_reset_more_than_a_minute_away_is_left_to_the_429_path(segment):
    segment.configure(limit_get_audience=1, rate_window_seconds=3600)

    def never(seconds: float) -> None:
        raise AssertionError(f"the limiter slept {seconds} s")

    (hook,) = hooks_on(RateLimiter(sleep=never), 1, retry=RetryPolicy(max_attempts=2))
    hook.get_audience(SEED)  # remaining 0, reset in an hour: too long to hold, nothing recorded
    with pytest.raises(AudienceRateLimitError, match="wait"):
        hook.get_audience(SEED)  # sent, refused with 429 and a Retry-After too long to sleep on
    assert [r["status"] for r in segment.requests] == [200, 429]
