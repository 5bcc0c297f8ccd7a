"""The one rule of every wait: judge each look at the vendor's work, count failures in a row.

A trigger in the triggerer, an operator polling in its worker and a sensor's ``poke`` all call a
hook status function and hand its answer (a :class:`~airflow_audience_provider.core.results.PollResult`)
or the exception it raised to :func:`judge`. The loops around it only sleep, keep their deadline and
turn the final judgement into a trigger event (:func:`final_event`) or a return value or exception
(:func:`outcome`).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

from airflow_audience_provider.core.errors import FATAL_ERRORS, AudienceError, AudienceJobFailedError
from airflow_audience_provider.core.results import EventStatus, Phase, PollResult, make_event


class Verdict(enum.StrEnum):
    """What one poll means for a wait (see :func:`judge`)."""

    DONE = "done"  # the vendor finished the work
    FAILED = "failed"  # the vendor reports that the work failed
    WAIT = "wait"  # still working, or a transient error within the budget
    ERROR = "error"  # an error no waiting fixes, or too many transient errors in a row


@dataclass(frozen=True)
class Judgement:
    """What one look means, and the consecutive failures counted so far."""

    verdict: Verdict
    failures: int
    result: PollResult | None = None
    error: BaseException | None = None

    @property
    def final(self) -> bool:
        return self.verdict is not Verdict.WAIT

    @property
    def fatal(self) -> bool:
        """The error is one no waiting fixes (authentication, permission, not found, bad input)."""
        return isinstance(self.error, FATAL_ERRORS)


def judge(answer: PollResult | BaseException, failures: int, max_failures: int) -> Judgement:
    """Judge a status function's answer, or the exception it raised, after ``failures`` in a row.

    Done and failed end the wait; running and unknown states keep waiting and reset the count. A
    fatal error ends it at once; any other error is tolerated until ``max_failures`` in a row.
    """
    if isinstance(answer, BaseException):
        if isinstance(answer, FATAL_ERRORS):
            return Judgement(Verdict.ERROR, failures, error=answer)
        failures += 1
        return Judgement(Verdict.ERROR if failures >= max_failures else Verdict.WAIT, failures, error=answer)
    if answer.phase is Phase.DONE:
        return Judgement(Verdict.DONE, 0, result=answer)
    if answer.phase is Phase.FAILED:
        return Judgement(Verdict.FAILED, 0, result=answer)
    return Judgement(Verdict.WAIT, 0, result=answer)


def log_judgement(log: logging.Logger, judgement: Judgement, subject: str, max_failures: int) -> None:
    """One log line for a look: the vendor's answer, or the error and the failures tolerated."""
    if judgement.result is not None:
        log.info("%s: %s", subject, judgement.result.describe())
    elif not judgement.final:
        exc = judgement.error
        log.warning(
            "Checking %s failed (%s: %s); %d of %d consecutive failures tolerated",
            subject,
            type(exc).__name__,
            exc,
            judgement.failures,
            max_failures,
        )


def error_event(vendor: str, exc: AudienceError) -> dict[str, Any]:
    """An ``error`` event for a typed error, in the keys ``validate_event`` reads back.

    (``exc.to_dict()`` cannot be splatted into ``make_event``: its ``status``, ``vendor``
    and ``message`` keys collide with make_event's own arguments.)
    """
    return make_event(
        EventStatus.ERROR,
        vendor,
        str(exc),
        error=type(exc).__name__,
        http_status=exc.status,
        code=exc.code,
        request_id=exc.request_id,
    )


def final_event(judgement: Judgement, vendor: str, subject: str) -> dict[str, Any]:
    """The trigger event that ends a wait, from a final judgement."""
    result = judgement.result
    if result is not None:
        status = EventStatus.SUCCESS if judgement.verdict is Verdict.DONE else EventStatus.FAILED
        return make_event(status, vendor, result.message, vendor_status=result.vendor_status, result=result.data or {})
    exc = judgement.error
    if judgement.fatal and isinstance(exc, AudienceError):
        return error_event(vendor, exc)
    return make_event(
        EventStatus.ERROR, vendor, f"Gave up checking {subject} after {judgement.failures} consecutive failures: {exc}"
    )


def outcome(judgement: Judgement, vendor: str) -> dict[str, Any]:
    """What a final judgement means in a worker: the result data when done, else the exception.

    :raises AudienceJobFailedError: when the vendor reports failure.
    :raises BaseException: the error that ended the wait.
    """
    result = judgement.result
    if judgement.verdict is Verdict.DONE and result is not None:
        return dict(result.data or {})
    if judgement.verdict is Verdict.FAILED and result is not None:
        raise AudienceJobFailedError(result.message, vendor=vendor, code=result.vendor_status)
    assert judgement.error is not None, judgement
    raise judgement.error
