"""The errors of durable workflow code.

Two kinds: those that fail the *workflow task* (the code does not match its
history, or it touched something non-deterministic), after which the server
retries the task and the run waits for fixed code with nothing lost; and those
the workflow code sees as outcomes of what it awaited (an activity or a child
that failed), which it may catch.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.errors import ActivityError, TasksError

__all__ = [
    "ActivityError",
    "ChildWorkflowError",
    "ContinueAsNew",
    "ExternalWorkflowError",
    "NonDeterminismError",
    "WorkflowSandboxError",
    "WorkflowTaskError",
]


class WorkflowTaskError(TasksError):
    """Fails the workflow task, not the workflow: the server retries the task later."""

    code = "workflow_task_failed"
    status = None


class NonDeterminismError(WorkflowTaskError):
    """The code, replayed, issued commands that differ from the run's history."""

    code = "non_determinism"


class WorkflowSandboxError(WorkflowTaskError):
    """Workflow code called something that differs between runs (clock, randomness, I/O)."""

    code = "sandbox"


class ChildWorkflowError(TasksError):
    """A child workflow failed, timed out, was canceled or terminated, or could not start."""

    code = "child_workflow_failed"
    status = None

    def __init__(self, message: str, failure: dict[str, Any] | None = None) -> None:
        super().__init__(message, details={"failure": dict(failure or {})})


class ExternalWorkflowError(TasksError):
    """Signalling or cancelling another workflow failed (unknown, closed, or not a child)."""

    code = "external_workflow_failed"
    status = None


class ContinueAsNew(BaseException):  # noqa: N818 - a control-flow signal, not an error
    """Raised by ``continue_as_new``: the run closes and a new one starts with ``input``.

    A BaseException so that ``except Exception`` in workflow code does not swallow it.
    """

    def __init__(self, command: dict[str, Any]) -> None:
        super().__init__("continue as new")
        self.command = command
