"""Exceptions raised by the client library (SPEC §2.5).

Every failure a caller can see is a ``TasksError`` carrying the server's
``code`` (stable, machine-readable), a human ``message``, the HTTP ``status``,
``details`` and ``retry_after``. Callers branch on the subclass; the subclass
is chosen from the error *code* first, because one status can carry several
codes (409 is ``already_exists``, ``already_started`` or
``failed_precondition``), and only then from the status, so that a server
newer than this client still yields a sensible class.

The code -> status table lives in ``protocol.errors`` so that the server and
the client can never disagree about it.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.protocol.errors import CODE_STATUS

__all__ = [
    "ActivityError",
    "AlreadyExists",
    "AlreadyStarted",
    "Canceled",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NoHandler",
    "NoWorkers",
    "NonRetryableError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "StorageFull",
    "TasksError",
    "Timeout",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "WorkflowCanceled",
    "WorkflowContinuedAsNew",
    "WorkflowFailed",
    "WorkflowTerminated",
    "WorkflowTimedOut",
    "error_from",
    "workflow_error",
]


class TasksError(Exception):
    """Base of every error raised by ``tasks``.

    Subclasses set the class attributes ``code`` and ``status``; an instance
    may override both (``error_from`` keeps the server's own code even when it
    falls back to a status-based subclass).
    """

    code: str = "unknown"
    status: int | None = None

    def __init__(
        self,
        message: str = "",
        *,
        code: str | None = None,
        status: int | None = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message: str = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.details: dict[str, Any] = dict(details) if details else {}
        self.retry_after: float | None = retry_after

    def __reduce__(self) -> tuple[Any, ...]:
        # The keyword-only arguments are not in self.args, so the default
        # pickling would lose them (and break errors crossing processes).
        return (
            _rebuild,
            (type(self), self.message, self.code, self.status, self.details, self.retry_after),
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, code={self.code!r}, status={self.status!r})"
        )


def _rebuild(
    cls: type[TasksError],
    message: str,
    code: str,
    status: int | None,
    details: dict[str, Any],
    retry_after: float | None,
) -> TasksError:
    err = cls.__new__(cls)
    TasksError.__init__(
        err, message, code=code, status=status, details=details, retry_after=retry_after
    )
    return err


def _status(code: str) -> int | None:
    return CODE_STATUS.get(code)


class InvalidArgument(TasksError, ValueError):
    """The request is malformed; also a ``ValueError`` so generic code catches it."""

    code = "invalid_argument"
    status = _status(code)


class Unauthenticated(TasksError):
    code = "unauthenticated"
    status = _status(code)


class PermissionDenied(TasksError):
    code = "permission_denied"
    status = _status(code)


class NotFound(TasksError):
    code = "not_found"
    status = _status(code)


class AlreadyExists(TasksError):
    code = "already_exists"
    status = _status(code)


class AlreadyStarted(AlreadyExists):
    """An open run already has this workflowId; ``details`` has ``workflowId``, ``runId``."""

    code = "already_started"
    status = _status(code)


class FailedPrecondition(TasksError):
    code = "failed_precondition"
    status = _status(code)


class TooLarge(TasksError):
    code = "too_large"
    status = _status(code)


class RateLimited(TasksError):
    """Retried by the client (SPEC §2.4) before it reaches the caller."""

    code = "rate_limited"
    status = _status(code)


class Internal(TasksError):
    code = "internal"
    status = _status(code)


class Unsupported(TasksError):
    code = "not_implemented"
    status = _status(code)


class Unavailable(TasksError):
    """The server (or the connection to it) is unavailable; safe to retry."""

    code = "unavailable"
    status = _status(code)


class NoWorkers(Unavailable):
    code = "no_workers"
    status = _status(code)


class Timeout(TasksError):
    """A server-side timeout (504) or a client-side deadline."""

    code = "timeout"
    status = _status(code)


class StorageFull(TasksError):
    code = "storage_full"
    status = _status(code)


class NoHandler(TasksError):
    """Local mode only: ``now()`` found neither an ``fn`` nor a ``handler``."""

    code = "no_handler"
    status = None


class NonRetryableError(TasksError):
    """Raised by worker code to fail a task without further retries."""

    code = "non_retryable"
    status = None


class Canceled(TasksError):
    """Raised by worker code to acknowledge a cancel request."""

    code = "canceled"
    status = None


class ActivityError(TasksError):
    """An activity awaited with ``ctx.execute_activity`` failed, timed out or was canceled.

    ``failure`` is the server's failure map (``message``, ``type``,
    ``nonRetryable``/``non_retryable``, ``timeoutType``, ...), kept whole in
    ``details["failure"]`` so that it survives pickling like every TasksError.
    """

    code = "activity_failed"
    status = None

    def __init__(self, failure: dict[str, Any] | None = None, message: str | None = None) -> None:
        failure = dict(failure) if isinstance(failure, dict) else {}
        msg = message or (failure.get("message") if isinstance(failure.get("message"), str) else "")
        super().__init__(msg or "activity failed", details={"failure": failure})

    @property
    def failure(self) -> dict[str, Any]:
        f = self.details.get("failure")
        return f if isinstance(f, dict) else {}

    @property
    def type(self) -> str | None:
        """The failure's ``type`` (``CanceledError`` for a canceled activity)."""
        t = self.failure.get("type")
        return t if isinstance(t, str) else None


class WorkflowFailed(TasksError):
    """The workflow run a result was awaited for closed without a result.

    Raised by ``handle.result()`` / ``client.result()`` / ``client.execute()``.
    This class means the workflow failed (its code raised, or retries ran out);
    subclasses say it was canceled, terminated or timed out, so ``except
    WorkflowFailed`` catches every run that did not complete. The message is
    the server's failure message; ``failure`` is the whole Failure record
    (``message``, ``type``, ``details``, ...), ``workflow_status`` the run's
    status (``FAILED``, ``CANCELED``, ...). Everything is kept in ``details``,
    so the error survives pickling like every TasksError.
    """

    code = "workflow_failed"
    status = None

    @property
    def workflow_id(self) -> str:
        return str(self.details.get("workflowId") or "")

    @property
    def run_id(self) -> str:
        return str(self.details.get("runId") or "")

    @property
    def workflow_status(self) -> str:
        return str(self.details.get("status") or "")

    @property
    def failure(self) -> dict[str, Any]:
        f = self.details.get("failure")
        return f if isinstance(f, dict) else {}

    @property
    def type(self) -> str | None:
        """The failure's ``type`` (the exception class name the workflow raised, for one)."""
        t = self.failure.get("type")
        return t if isinstance(t, str) else None


class WorkflowCanceled(WorkflowFailed):
    """The run was canceled (a cancel request its code acknowledged)."""

    code = "workflow_canceled"


class WorkflowTerminated(WorkflowFailed):
    """The run was terminated (by an operator, a reset, a conflict policy or the history limit)."""

    code = "workflow_terminated"


class WorkflowTimedOut(WorkflowFailed):
    """The run passed its run or execution timeout (``failure["timeoutType"]`` says which)."""

    code = "workflow_timed_out"


class WorkflowContinuedAsNew(TasksError):
    """``result(follow=False)`` found the run continued as new; ``next_run_id`` is the new run."""

    code = "workflow_continued_as_new"
    status = None

    @property
    def next_run_id(self) -> str:
        return str(self.details.get("nextRunId") or "")


_WORKFLOW_CLOSE: dict[str, type[WorkflowFailed]] = {
    "FAILED": WorkflowFailed,
    "CANCELED": WorkflowCanceled,
    "TERMINATED": WorkflowTerminated,
    "TIMED_OUT": WorkflowTimedOut,
}


def workflow_error(workflow_id: str, run_id: str, status: str, failure: Any) -> TasksError:
    """The error for a run that closed as ``status`` (bare, ``FAILED``...) with ``failure``."""
    failure = dict(failure) if isinstance(failure, dict) else {}
    cls = _WORKFLOW_CLOSE.get(status, WorkflowFailed)
    reason = failure.get("message") if isinstance(failure.get("message"), str) else ""
    what = {"FAILED": "failed", "CANCELED": "was canceled", "TERMINATED": "was terminated",
            "TIMED_OUT": "timed out"}.get(status, status.lower())
    message = f"workflow {workflow_id} {what}" + (f": {reason}" if reason else "")
    return cls(message, details={"workflowId": workflow_id, "runId": run_id, "status": status,
                                 "failure": failure})


# Classes a server code can select. Worker-side and local-only classes are
# deliberately absent: a server never sends those codes.
_BY_CODE: dict[str, type[TasksError]] = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        AlreadyExists,
        AlreadyStarted,
        FailedPrecondition,
        TooLarge,
        RateLimited,
        Internal,
        Unsupported,
        Unavailable,
        NoWorkers,
        Timeout,
        StorageFull,
    )
}

# Fallback for unknown codes: the most general class of each status. 409 is
# shared by three codes; AlreadyExists is the common case of a conflict.
_BY_STATUS: dict[int, type[TasksError]] = {
    400: InvalidArgument,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: AlreadyExists,
    413: TooLarge,
    429: RateLimited,
    500: Internal,
    501: Unsupported,
    503: Unavailable,
    504: Timeout,
    507: StorageFull,
}


def error_from(
    status: int, body: dict[str, Any] | None, *, retry_after: float | None = None
) -> TasksError:
    """Build the exception for an error response (SPEC §4.1 body format).

    ``body`` is the parsed JSON ``{"code", "message", "details"?}``; anything
    else (None, a proxy's HTML page parsed as nothing, wrong field types) is
    tolerated, because an error path must never raise an error of its own.
    """
    code: str | None = None
    message = ""
    details: dict[str, Any] | None = None
    if isinstance(body, dict):
        if isinstance(body.get("code"), str) and body["code"]:
            code = body["code"]
        if isinstance(body.get("message"), str):
            message = body["message"]
        if isinstance(body.get("details"), dict):
            details = body["details"]
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status) or TasksError
    if code is None:
        code = cls.code if cls is not TasksError else f"http_{status}"
    if not message:
        message = f"HTTP {status} ({code})"
    return cls(message, code=code, status=status, details=details, retry_after=retry_after)
