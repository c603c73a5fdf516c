"""Error codes shared by client and server, and the HTTP status of each.

One table, so that the HTTP API, ZAP responses and the client's exception
classes can never disagree about what a code means.
"""

from __future__ import annotations

from typing import Any

CODE_STATUS: dict[str, int] = {
    "invalid_argument": 400,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "already_exists": 409,
    "already_started": 409,
    "failed_precondition": 409,
    "too_large": 413,
    "rate_limited": 429,
    "internal": 500,
    "not_implemented": 501,
    "unavailable": 503,
    "no_workers": 503,
    "timeout": 504,
    "storage_full": 507,
}


class ApiError(Exception):
    """A business or validation error that maps onto an API status.

    Raised by the service layer; the transports (HTTP, ZAP) render it. It is
    never raised inside the state machine, which returns results instead.
    """

    def __init__(
        self,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details
        self.status = CODE_STATUS.get(code, 500)
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"ApiError({self.code!r}, {self.message!r})"


def invalid(message: str, **details: Any) -> ApiError:
    return ApiError("invalid_argument", message, details or None)


def not_found(message: str) -> ApiError:
    return ApiError("not_found", message)
