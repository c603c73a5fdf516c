"""Durable workflows in Python: ``@workflow`` code that survives crashes by replaying history.

    from datetime import timedelta
    from hanzo_tasks.workflow import activity, workflow

    @activity
    def charge(order: dict) -> str: ...

    @workflow
    async def checkout(order: dict) -> str:
        receipt = await workflow.execute_activity(
            charge, order, start_to_close_timeout=timedelta(seconds=30))
        await workflow.sleep(timedelta(days=1))        # a durable timer
        return receipt

    tasks.Worker(client, workflows=[checkout], activities=[charge]).start()

``workflow`` is both the decorator and the namespace of what workflow code may
call (``workflow.sleep``, ``workflow.now``, ...); the same functions are also
importable from this module. The task-style ``Worker.register(name, fn)`` is
unchanged beside it. This package imports no server code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hanzo_tasks.errors import ActivityError
from hanzo_tasks.workflow import api as _api
from hanzo_tasks.workflow.api import (
    ChildWorkflowHandle,
    cancel_external_workflow,
    continue_as_new,
    execute_activity,
    execute_child_workflow,
    info,
    logger,
    now,
    patched,
    random,
    set_query_handler,
    set_signal_handler,
    side_effect,
    signal_external_workflow,
    sleep,
    start_child_workflow,
    upsert_search_attributes,
    uuid4,
    wait_condition,
)
from hanzo_tasks.workflow.definitions import (
    ActivityDefinition,
    RetryPolicy,
    WorkflowDefinition,
    activity,
    query,
    signal,
    workflow_definition,
)
from hanzo_tasks.workflow.errors import (
    ChildWorkflowError,
    ExternalWorkflowError,
    NonDeterminismError,
    WorkflowSandboxError,
    WorkflowTaskError,
)
from hanzo_tasks.workflow.executor import WorkflowExecutor, WorkflowInfo
from hanzo_tasks.workflow.replayer import Replayer


class _Workflow:
    """``@workflow`` / ``@workflow(name=...)``, and the workflow API as attributes."""

    defn = staticmethod(workflow_definition)
    signal = staticmethod(signal)
    query = staticmethod(query)

    def __call__(self, target: Any = None, *, name: str | None = None) -> Any:
        return workflow_definition(target, name=name)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        if name in _api.__all__:
            return getattr(_api, name)  # type: ignore[no-any-return]
        raise AttributeError(f"workflow has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted({"defn", "signal", "query", *_api.__all__})

    def __repr__(self) -> str:
        return "<hanzo_tasks.workflow.workflow>"


workflow = _Workflow()

__all__ = [
    "ActivityDefinition",
    "ActivityError",
    "ChildWorkflowError",
    "ChildWorkflowHandle",
    "ExternalWorkflowError",
    "NonDeterminismError",
    "Replayer",
    "RetryPolicy",
    "WorkflowDefinition",
    "WorkflowExecutor",
    "WorkflowInfo",
    "WorkflowSandboxError",
    "WorkflowTaskError",
    "activity",
    "cancel_external_workflow",
    "continue_as_new",
    "execute_activity",
    "execute_child_workflow",
    "info",
    "logger",
    "now",
    "patched",
    "query",
    "random",
    "set_query_handler",
    "set_signal_handler",
    "side_effect",
    "signal",
    "signal_external_workflow",
    "sleep",
    "start_child_workflow",
    "upsert_search_attributes",
    "uuid4",
    "wait_condition",
    "workflow",
]
