"""Typed errors shared by every vendor.

Each error carries what a person needs to act on a failure without reading a stack trace:
the vendor, the HTTP status, the vendor's own error code, the vendor's request id (quote it
to the vendor's support), and the vendor's message. Messages never contain tokens, request
bodies or identifiers.
"""

from __future__ import annotations

from typing import Any

# common-compat picks airflow.sdk.exceptions on 3.2+ and airflow.exceptions on 3.1 (which lacks the sdk names).
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException


class AudienceError(AirflowException):
    """Base class of every error raised by this provider."""

    def __init__(
        self,
        message: str,
        *,
        vendor: str | None = None,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        details: Any = None,
    ) -> None:
        self.message = message
        self.vendor = vendor
        self.status = status
        self.code = code
        self.request_id = request_id
        self.details = details
        super().__init__(self._render())

    def _render(self) -> str:
        facts = [
            f"{label}={value}"
            for label, value in (
                ("vendor", self.vendor),
                ("http_status", self.status),
                ("code", self.code),
                ("request_id", self.request_id),
            )
            if value not in (None, "")
        ]
        return f"{self.message} [{', '.join(facts)}]" if facts else self.message

    def restated(self, message: str, as_class: type[AudienceError] | None = None) -> AudienceError:
        """The same failure told better: a new error (of ``as_class``, default this class) with
        ``message`` and this error's vendor, HTTP status, vendor code and request id.

        Hooks use it to name what was looked for (``segment 'x' was not found in account y``)
        without losing the facts the vendor's support needs.
        """
        cls = as_class or type(self)
        return cls(
            message,
            vendor=self.vendor,
            status=self.status,
            code=self.code,
            request_id=self.request_id,
            details=self.details,
        )

    def to_dict(self) -> dict[str, Any]:
        """A small JSON-safe description, for trigger events and XCom."""
        return {
            "error": type(self).__name__,
            "message": self.message,
            "vendor": self.vendor,
            "status": self.status,
            "code": self.code,
            "request_id": self.request_id,
        }


class AudienceNonRetryableError(AudienceError, AirflowFailException):
    """An error that another try of the task cannot fix: Airflow fails the task without retrying."""


class AudienceConfigurationError(AudienceNonRetryableError):
    """The Airflow connection or the task arguments are wrong (names the connection and field)."""


class AudienceAuthenticationError(AudienceNonRetryableError):
    """The vendor rejected the credentials (HTTP 401 or the vendor's equivalent). Never retried."""


class AudiencePermissionError(AudienceNonRetryableError):
    """The credentials are valid but may not do this (HTTP 403). Never retried."""


class AudienceNotFoundError(AudienceError):
    """The object does not exist, or not in this account (HTTP 404)."""


class AudienceValidationError(AudienceNonRetryableError):
    """The vendor refused the request's content (HTTP 400/422); ``field`` names the culprit if known."""

    def __init__(self, message: str, *, field: str | None = None, **kwargs: Any) -> None:
        self.field = field
        super().__init__(message, **kwargs)

    def _render(self) -> str:
        base = super()._render()
        return f"{base} (field: {self.field})" if self.field else base


class AudienceConflictError(AudienceError):
    """The request conflicts with the object's current state (HTTP 409, a locked object)."""


class AudienceRateLimitError(AudienceError):
    """Rate limited, and the retry budget could not absorb the wait. ``retry_after`` in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)


class AudienceServerError(AudienceError):
    """The vendor failed (HTTP 5xx) on every attempt the retry policy allowed."""


class AudienceTransportError(AudienceError):
    """The vendor could not be reached (connection refused or dropped, timeouts) on every attempt."""


class AudiencePartialFailure(AudienceError):
    """Some items of a bulk call were refused; ``items`` lists them, each mapped to its input."""

    def __init__(self, message: str, *, items: list[dict[str, Any]] | None = None, **kwargs: Any) -> None:
        self.items = items or []
        super().__init__(message, **kwargs)


class AudienceJobFailedError(AudienceNonRetryableError):
    """An asynchronous vendor job (reevaluation, processing) ended in a failure state.

    Not retried by Airflow: waiting again would find the same failed job. Rerun the task
    that started the work (e.g. the reevaluation) instead.
    """


class AudienceTimeoutError(AudienceError):
    """Waiting for asynchronous vendor work ran past its deadline."""


class AudienceOutcomeUnknownError(AudienceNonRetryableError):
    """A non-idempotent write went unanswered and reading back could not tell whether it was applied.

    It is not resent (a resend could apply it twice) and Airflow does not retry the task: check the
    object at the vendor, then rerun the task if the write is still wanted.
    """


#: HTTP status -> error class, used by the transport when the vendor's parser has no opinion.
ERROR_BY_STATUS: dict[int, type[AudienceError]] = {
    400: AudienceValidationError,
    401: AudienceAuthenticationError,
    403: AudiencePermissionError,
    404: AudienceNotFoundError,
    409: AudienceConflictError,
    422: AudienceValidationError,
    423: AudienceConflictError,
    429: AudienceRateLimitError,
}


def error_class_for_status(status: int) -> type[AudienceError]:
    """The error class for an HTTP status: 5xx are server errors, unknown 4xx the base class."""
    if status >= 500:
        return AudienceServerError
    return ERROR_BY_STATUS.get(status, AudienceError)


#: Errors no amount of waiting will fix: a wait ends at once on them.
FATAL_ERRORS: tuple[type[AudienceError], ...] = (
    AudienceAuthenticationError,
    AudiencePermissionError,
    AudienceNotFoundError,
    AudienceConfigurationError,
    AudienceValidationError,
)
