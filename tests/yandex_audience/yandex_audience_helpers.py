"""Constants and small doubles shared by the Yandex.Audience tests (a uniquely named module: a bare
``from conftest import`` can pick another directory's conftest)."""

from __future__ import annotations

#: how long processing takes in the sandbox for these tests, and how often we look
PROCESSING = 0.2
POLL = 0.05


class FakeClock:
    """A clock whose sleep only moves time forward (the client-side limiter never really waits)."""

    def __init__(self) -> None:
        self.t = 1_000_000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds


def emails(n: int, start: int = 0) -> list[str]:
    return [f"User{i}@Example.com" for i in range(start, start + n)]
