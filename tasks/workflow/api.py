"""What workflow code calls: activities, timers, conditions, signals, time and randomness.

Every function here is replay-safe: it either issues a command that history
records (and replay matches), or reads something history fixes (the task's
time, the run's seed). Outside a running workflow they raise.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from hanzo_tasks.errors import InvalidArgument
from hanzo_tasks.protocol.names import is_id
from hanzo_tasks.worker_context import json_value
from hanzo_tasks.workflow.definitions import RetryPolicy, _ms
from hanzo_tasks.workflow.errors import ContinueAsNew
from hanzo_tasks.workflow.executor import WorkflowInfo, current_executor, in_workflow

__all__ = [
    "cancel_external_workflow",
    "continue_as_new",
    "execute_activity",
    "execute_child_workflow",
    "info",
    "logger",
    "now",
    "patched",
    "random",
    "set_query_handler",
    "set_signal_handler",
    "side_effect",
    "signal_external_workflow",
    "sleep",
    "start_child_workflow",
    "upsert_search_attributes",
    "uuid4",
    "wait_condition",
]


def _name_of(target: Any, attr: str, what: str) -> str:
    name: Any
    if isinstance(target, str):
        name = target
    else:
        defn = getattr(target, attr, None)
        name = getattr(defn, "name", None) or getattr(target, "__name__", None)
    if not isinstance(name, str) or not is_id(name):
        raise InvalidArgument(f"invalid {what} {target!r}")
    return name


def _json(value: Any, what: str) -> Any:
    try:
        return json_value(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise InvalidArgument(f"{what} is not JSON: {e}") from None


def _options(body: dict[str, Any], ident: tuple[str, str | None, str], task_queue: str | None,
             retry_policy: RetryPolicy | None, **timeouts: timedelta | None) -> None:
    """The options a scheduling command shares: its id, queue, ``<name>_ms`` timeouts
    and retry policy, each checked and added to ``body`` only when given."""
    key, value, what = ident
    if value is not None:
        if not is_id(value):
            raise InvalidArgument(f"invalid {what} {value!r}")
        body[key] = value
    if task_queue is not None:
        body["task_queue"] = task_queue
    for name, timeout in timeouts.items():
        ms = _ms(timeout, name.removeprefix("workflow_"))
        if ms is not None:
            body[f"{name}_ms"] = ms
    if retry_policy is not None:
        if not isinstance(retry_policy, RetryPolicy):
            raise InvalidArgument("retry_policy must be a workflow.RetryPolicy")
        body["retry_policy"] = retry_policy.to_zap()


async def execute_activity(
    activity: Any,
    arg: Any = None,
    *,
    activity_id: str | None = None,
    task_queue: str | None = None,
    start_to_close_timeout: timedelta | None = None,
    schedule_to_close_timeout: timedelta | None = None,
    schedule_to_start_timeout: timedelta | None = None,
    heartbeat_timeout: timedelta | None = None,
    retry_policy: RetryPolicy | None = None,
) -> Any:
    """Run an activity (an ``@activity`` function or its name) and return its result.

    Raises :class:`~hanzo_tasks.ActivityError` when it fails for good, times out
    or is canceled. Cancelling the awaiting task asks the server to cancel it.
    """
    ex = current_executor()
    body: dict[str, Any] = {
        "type": "ScheduleActivityTask",
        "activity_type": _name_of(activity, "__tasks_activity__", "activity"),
        "input": _json(arg, "activity input"),
    }
    _options(body, ("activity_id", activity_id, "activity id"), task_queue, retry_policy,
             start_to_close_timeout=start_to_close_timeout, schedule_to_close_timeout=schedule_to_close_timeout,
             schedule_to_start_timeout=schedule_to_start_timeout, heartbeat_timeout=heartbeat_timeout)
    fut = ex.schedule_activity(body)
    try:
        return await fut
    except asyncio.CancelledError:
        ex.cancel_activity(body["activity_id"])
        raise


async def sleep(duration: timedelta | float) -> None:
    """A durable timer: the run sleeps on the server (survives worker restarts)."""
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
    current_executor()
    await asyncio.sleep(seconds)


async def wait_condition(
    fn: Callable[[], Any], *, timeout: timedelta | float | None = None
) -> None:
    """Wait until ``fn()`` is true; it is checked again after every event (a signal, say).

    With ``timeout``, raises ``asyncio.TimeoutError`` when it passes first (a durable timer).
    """
    ex = current_executor()
    if fn():
        return
    fut = ex.add_condition(fn)
    if timeout is None:
        await fut
        return
    seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
    await asyncio.wait_for(fut, seconds)


def now() -> datetime:
    """The workflow's time: when the current workflow task started (UTC), as history recorded."""
    return datetime.fromtimestamp(current_executor().now_ms / 1000.0, tz=UTC)


def random() -> float:
    """A float in [0, 1) from the run's seeded generator (identical on replay)."""
    return current_executor().rng.random()


def uuid4() -> uuid.UUID:
    """A UUID from the run's seeded generator (identical on replay)."""
    return current_executor().random_uuid4()


def info() -> WorkflowInfo:
    """Ids, type, queue and attempt of the running workflow."""
    return current_executor().info


def side_effect(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` once and record its (JSON) result; replays return the recorded value."""
    return current_executor().side_effect(fn)


def patched(patch_id: str) -> bool:
    """Versioning: True on runs that reach this point with the new code, False on replays
    of runs that passed it with the old code (branch on it to keep both paths)."""
    if not is_id(patch_id):
        raise InvalidArgument(f"invalid patch id {patch_id!r}")
    return current_executor().patched(patch_id)


def upsert_search_attributes(attrs: Mapping[str, Any]) -> None:
    """Set (or, with None, remove) search attributes of this run."""
    if not attrs:
        raise InvalidArgument("upsert_search_attributes needs at least one attribute")
    current_executor().upsert_search_attributes(_json(dict(attrs), "search attributes"))


def set_signal_handler(name: str, fn: Callable[..., Any] | None) -> None:
    """Run ``fn(input)`` (or ``fn()``) for each signal ``name``; signals that arrived
    before the handler was set are delivered to it at once, in order."""
    if not is_id(name):
        raise InvalidArgument(f"invalid signal name {name!r}")
    current_executor().set_signal_handler(name, fn)


def set_query_handler(name: str, fn: Callable[..., Any] | None) -> None:
    """Answer query ``name`` with ``fn(args)`` (or ``fn()``); a plain, read-only function."""
    if not is_id(name):
        raise InvalidArgument(f"invalid query name {name!r}")
    handlers = current_executor().query_handlers
    if fn is None:
        handlers.pop(name, None)
    else:
        handlers[name] = fn


def continue_as_new(
    arg: Any = None, *, workflow: Any = None, task_queue: str | None = None,
    run_timeout: timedelta | None = None, task_timeout: timedelta | None = None,
    retry_policy: RetryPolicy | None = None,
) -> Any:
    """Close this run and start a fresh one (same workflow id) with ``arg``; never returns."""
    current_executor()
    cmd: dict[str, Any] = {"type": "ContinueAsNew", "input": _json(arg, "input")}
    if workflow is not None:
        cmd["workflow_type"] = _name_of(workflow, "__tasks_workflow__", "workflow")
    if task_queue is not None:
        cmd["task_queue"] = task_queue
    if run_timeout is not None:
        cmd["workflow_run_timeout_ms"] = _ms(run_timeout, "run_timeout")
    if task_timeout is not None:
        cmd["workflow_task_timeout_ms"] = _ms(task_timeout, "task_timeout")
    if retry_policy is not None:
        cmd["retry_policy"] = retry_policy.to_zap()
    raise ContinueAsNew(cmd)


async def signal_external_workflow(
    workflow_id: str, signal_name: str, arg: Any = None, *, run_id: str | None = None,
    child_workflow_only: bool = False,
) -> None:
    """Signal another workflow of this namespace; raises ``ExternalWorkflowError`` when it
    is unknown or closed."""
    if not is_id(workflow_id) or not is_id(signal_name):
        raise InvalidArgument("signal_external_workflow needs a workflow id and a signal name")
    body: dict[str, Any] = {"type": "SignalExternalWorkflowExecution", "workflow_id": workflow_id,
                            "signal_name": signal_name, "input": _json(arg, "signal input")}
    if run_id is not None:
        body["run_id"] = run_id
    if child_workflow_only:
        body["child_workflow_only"] = True
    await current_executor().external(body, "signal")


async def cancel_external_workflow(
    workflow_id: str, *, run_id: str | None = None, child_workflow_only: bool = False,
) -> None:
    """Ask another workflow of this namespace to cancel (it sees CANCEL_REQUESTED)."""
    if not is_id(workflow_id):
        raise InvalidArgument(f"invalid workflow id {workflow_id!r}")
    body: dict[str, Any] = {"type": "RequestCancelExternalWorkflowExecution",
                            "workflow_id": workflow_id}
    if run_id is not None:
        body["run_id"] = run_id
    if child_workflow_only:
        body["child_workflow_only"] = True
    await current_executor().external(body, "cancel")


class ChildWorkflowHandle:
    """A started child: ``await handle`` (or ``handle.result()``) for its result."""

    def __init__(self, workflow_id: str, child: Any) -> None:
        self.workflow_id = workflow_id
        self._child = child

    @property
    def run_id(self) -> str | None:
        return self._child.run_id  # type: ignore[no-any-return]

    async def result(self) -> Any:
        return await self._child.future

    async def signal(self, signal_name: str, arg: Any = None) -> None:
        """Signal this child."""
        await signal_external_workflow(self.workflow_id, signal_name, arg,
                                       child_workflow_only=True)

    async def cancel(self) -> None:
        """Ask this child to cancel; its result then raises ``ChildWorkflowError``."""
        await cancel_external_workflow(self.workflow_id, child_workflow_only=True)

    def __await__(self) -> Any:
        return self.result().__await__()


async def start_child_workflow(
    workflow: Any,
    arg: Any = None,
    *,
    id: str | None = None,  # noqa: A002 - the natural name
    task_queue: str | None = None,
    execution_timeout: timedelta | None = None,
    run_timeout: timedelta | None = None,
    task_timeout: timedelta | None = None,
    retry_policy: RetryPolicy | None = None,
    parent_close_policy: str | None = None,
) -> ChildWorkflowHandle:
    """Start a child workflow and wait until it has started; returns its handle."""
    ex = current_executor()
    body: dict[str, Any] = {
        "type": "StartChildWorkflowExecution",
        "workflow_type": _name_of(workflow, "__tasks_workflow__", "workflow"),
        "input": _json(arg, "child input"),
    }
    _options(body, ("workflow_id", id, "workflow id"), task_queue, retry_policy,
             workflow_execution_timeout=execution_timeout, workflow_run_timeout=run_timeout,
             workflow_task_timeout=task_timeout)
    if parent_close_policy is not None:
        if parent_close_policy not in ("TERMINATE", "ABANDON", "REQUEST_CANCEL"):
            raise InvalidArgument("parent_close_policy is TERMINATE, ABANDON or REQUEST_CANCEL")
        body["parent_close_policy"] = parent_close_policy
    child = ex.start_child(body)
    await asyncio.wait([child.started, child.future], return_when=asyncio.FIRST_COMPLETED)
    if child.future.done() and child.future.exception() is not None and not child.started.done():
        child.future.result()  # could not start: raise its error
    return ChildWorkflowHandle(body["workflow_id"], child)


async def execute_child_workflow(workflow: Any, arg: Any = None, **options: Any) -> Any:
    """Start a child workflow and return its result (``ChildWorkflowError`` if it fails)."""
    handle = await start_child_workflow(workflow, arg, **options)
    return await handle.result()


class _ReplaySafeLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that says nothing while the code replays (it already said it once)."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - logging's name
        if in_workflow() and current_executor().replaying:
            return False
        return self.logger.isEnabledFor(level)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        if in_workflow():
            i = current_executor().info
            return f"[{i.workflow_type} {i.workflow_id}] {msg}", kwargs
        return msg, kwargs


logger = _ReplaySafeLogger(logging.getLogger("hanzo_tasks.workflow.code"), {})
