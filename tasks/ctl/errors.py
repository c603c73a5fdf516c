"""The two ways a tasksctl command fails, each with its own exit code."""

from __future__ import annotations

from typing import Any


class UsageError(Exception):
    """Bad command line (exit 2)."""


class ApiError(Exception):
    """An error answer from the server, or a failure to reach it (exit 1)."""

    def __init__(
        self, code: str, message: str, status: int = 0, details: Any = None, body: Any = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.details = details
        self.body = body
