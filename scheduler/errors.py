"""The scheduler's one error base, so every layer fails in a way the API can answer.

The store, the state machine and (later) the service and backends raise `SchedulerError` subclasses; the
API has one exception handler that turns any of them into `http_status` and the body
`{"error": {"code", "message", "details"}}`. Third-party exceptions (SQLAlchemy, psycopg, kubernetes, helm)
are wrapped in one of these with the original chained as `__cause__`, never leaked to the user.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SchedulerError(Exception):
    """Base of every error the scheduler reports; carries what the API needs to answer."""

    http_status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.details: dict[str, Any] = dict(details or {})

    def to_body(self) -> dict[str, Any]:
        """The JSON error body the API returns."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r})"


class NotFound(SchedulerError):
    """An id or a name that does not exist (a job, a pipeline, a pipeline version)."""

    http_status = 404
    default_code = "not_found"


class Conflict(SchedulerError):
    """The request is well formed but clashes with the current state of the stored data."""

    http_status = 409
    default_code = "conflict"


class IllegalTransition(Conflict):
    """A job state change that the transition table does not allow; nothing was changed."""

    default_code = "illegal_transition"

    def __init__(self, from_state: str, to_state: str, *, job_id: str | None = None) -> None:
        details: dict[str, Any] = {"from": str(from_state), "to": str(to_state)}
        if job_id is not None:
            details["job_id"] = job_id
        where = f"job {job_id}: " if job_id is not None else ""
        super().__init__(f"{where}cannot go from {from_state} to {to_state}", details=details)
        self.from_state = from_state
        self.to_state = to_state
        self.job_id = job_id


class InvalidInput(SchedulerError):
    """Input that fails validation (a malformed digest, cursor, limit or counter)."""

    http_status = 422
    default_code = "invalid_input"


class StoreUnavailable(SchedulerError):
    """The database cannot be reached or answered with an operational error; retrying later may work."""

    http_status = 503
    default_code = "store_unavailable"


class QuotaExceeded(SchedulerError):
    """A start over one of the caller's quotas (`max_concurrent_jobs`, `max_rows_per_day`): HTTP 429 with
    `Retry-After` (`headers`), the details naming the quota, its limit and the usage."""

    http_status = 429
    default_code = "quota_exceeded"

    def __init__(self, message: str, *, quota: str, limit: int, usage: int, token: str, retry_after: int) -> None:
        super().__init__(
            message,
            details={
                "quota": quota,
                "limit": limit,
                "usage": usage,
                "token": token,
                "retry_after_seconds": retry_after,
            },
        )
        self.quota = quota
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}
