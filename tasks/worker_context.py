"""What a running task is: its record, its context object, ``tasks.context()``.

Why a module of its own: the contexts are the handler's view of a task (ids,
attempts, signals, cancel flag, heartbeats, activities), used by the facade,
both halves of the worker and the handlers themselves; they know the worker
only as the object that carries their requests.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgpack
from hanzo_tasks.errors import Canceled, FailedPrecondition, InvalidArgument
from hanzo_tasks.protocol.names import is_id

if TYPE_CHECKING:
    from hanzo_tasks.worker import Worker

__all__ = ["ActivityContext", "Outcome", "Run", "TaskContext", "context"]

current_context: contextvars.ContextVar[TaskContext | ActivityContext | None] = (
    contextvars.ContextVar("tasks_context", default=None)
)

pool_thread = threading.local()  # set on pool threads while they run a handler


def context() -> TaskContext | ActivityContext:
    """The context of the task the caller runs in; ``FailedPrecondition`` outside a handler.

    A context variable, so it follows the handler into the coroutines it
    awaits and is invisible to other handlers running at the same time.
    """
    ctx = current_context.get()
    if ctx is None:
        raise FailedPrecondition("tasks.context() is only available inside a task handler")
    return ctx


def json_value(value: Any) -> Any:
    """``value`` as the JSON it will travel as; TypeError/ValueError if it cannot.

    Round-tripping through ``json`` gives exactly what an HTTP client would
    store (tuples become lists, int keys become strings), and the msgpack
    check catches what JSON accepts but a ZAP body cannot hold (ints over 64 bits).
    """
    out = json.loads(json.dumps(value, allow_nan=False))
    msgpack.packb(out, use_bin_type=True)
    return out


def signals_of(history: Any) -> list[dict[str, Any]]:
    """``{name, input}`` for each WORKFLOW_EXECUTION_SIGNALED event, in order."""
    out: list[dict[str, Any]] = []
    if not isinstance(history, list):
        return out
    for ev in history:
        if not isinstance(ev, dict):
            continue
        et = ev.get("eventType", ev.get("event_type"))
        if not (isinstance(et, str) and et.upper().endswith("WORKFLOW_EXECUTION_SIGNALED")):
            continue
        attrs = ev.get("attributes")
        attrs = attrs if isinstance(attrs, dict) else {}
        out.append(
            {"name": attrs.get("signalName", attrs.get("signal_name")), "input": attrs.get("input")}
        )
    return out


def push_str(body: dict[str, Any], key: str, default: str = "") -> str:
    v = body.get(key)
    return v if isinstance(v, str) else default


def push_int(body: dict[str, Any], key: str, default: int = 0) -> int:
    v = body.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


class Run:
    """One accepted task: its context, the handler's future and its flags (loop-side)."""

    def __init__(self, worker: Worker, kind: str, body: dict[str, Any]) -> None:
        self.worker = worker
        self.kind = kind  # "workflow" | "activity"
        self.body = body
        self.token: str = body["task_token"]
        self.ctx: TaskContext | ActivityContext
        self.is_async = False
        self.handler: asyncio.Future[Any] | None = None
        self.task: asyncio.Task[None] | None = None
        self.cancel_requested = bool(body.get("cancel_requested"))
        self.stale = False
        self.abandoned = False
        self.finished = False  # the handler is done: no more heartbeats
        self.thread_ident: int | None = None
        self.async_task: asyncio.Task[Any] | None = None
        self.handler_loop: asyncio.AbstractEventLoop | None = None
        self.heartbeat_details: Any = None
        self.queries: dict[str, Callable[..., Any]] = {}
        self.activity_seq = 0
        self.waiters: set[asyncio.Future[Any]] = set()

    def request_cancel(self) -> None:
        """A cancel request: async handlers are cancelled, sync ones see the flag."""
        if self.cancel_requested:
            return
        self.cancel_requested = True
        self._cancel_handler()

    def mark_stale(self) -> None:
        """404 on heartbeat: the task is no longer ours. Cancel; respond nothing."""
        if self.stale:
            return
        self.stale = True
        self.cancel_requested = True  # lets a cooperative sync handler stop early
        self._cancel_handler()
        for w in list(self.waiters):
            w.cancel()

    def _cancel_handler(self) -> None:
        if self.is_async and self.handler is not None and not self.handler.done():
            self.handler.cancel()


class _ContextBase:
    """What both contexts share: identity of the task, cancel flag, heartbeat."""

    def __init__(self, run: Run) -> None:
        self._run = run
        b = run.body
        self.namespace: str = push_str(b, "namespace", run.worker.namespace)
        self.task_queue: str = push_str(b, "task_queue", run.worker.task_queue)
        self.workflow_id: str = push_str(b, "workflow_id")
        self.run_id: str = push_str(b, "run_id")
        self.task_token: str = run.token

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel was requested (or the task went stale); check it in sync code."""
        return self._run.cancel_requested

    def heartbeat(self, details: Any = None) -> None:
        """Send a heartbeat now (0x00A5); its answer updates ``cancel_requested``.

        Blocks (briefly) in sync handlers so that the flag is fresh when it
        returns; in coroutines it is sent in the background, because blocking
        there would stall the loop that must carry it.
        """
        run = self._run
        if details is not None:
            try:
                details = json_value(details)
            except (TypeError, ValueError, OverflowError) as e:
                raise InvalidArgument(f"heartbeat details are not JSON: {e}") from None
            run.heartbeat_details = details
        run.worker._heartbeat_now(run, details)


class TaskContext(_ContextBase):
    """The running workflow task (SPEC §3): ids, attempts, signals, cancel, queries.

    ``signals`` lists the ``{name, input}`` of the WORKFLOW_EXECUTION_SIGNALED
    events in the delivered history, so a task-style handler can react to the
    signals that arrived before it ran.
    """

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        b = run.body
        self.workflow_type: str = push_str(b, "workflow_type")
        self.attempt: int = push_int(b, "workflow_attempt", 1)
        self.task_attempt: int = push_int(b, "attempt", 1)
        self.input: Any = b.get("input")
        self.signals: list[dict[str, Any]] = signals_of(b.get("history"))

    def __repr__(self) -> str:
        return (
            f"<TaskContext {self.namespace}/{self.workflow_id}/{self.run_id} "
            f"type={self.workflow_type} attempt={self.attempt}>"
        )

    def set_query_handler(self, name: str, fn: Callable[..., Any]) -> None:
        """Answer query ``name`` (0xB4) with ``fn()`` or ``fn(args)`` while this task runs."""
        if not is_id(name):
            raise InvalidArgument(f"invalid query type {name!r}")
        if not callable(fn):
            raise InvalidArgument("query handler must be callable")
        self._run.queries[name] = fn

    def execute_activity(
        self,
        activity_type: str,
        input: Any = None,  # noqa: A002 - the SPEC's name
        *,
        activity_id: str | None = None,
        task_queue: str | None = None,
        start_to_close: Any = None,
        schedule_to_close: Any = None,
        heartbeat: Any = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> Any:
        """Schedule an activity (0x006B), wait for its outcome (0xB2) and return its result.

        Raises :class:`~tasks.ActivityError` when it fails, times out or is
        canceled. Sync handlers only; coroutines use ``aexecute_activity``.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise FailedPrecondition("use `await ctx.aexecute_activity(...)` in coroutines")
        worker = self._run.worker
        assert worker._conn is not None
        fut = worker._conn.submit(
            worker._execute_activity(
                self._run,
                activity_type,
                input,
                activity_id,
                task_queue,
                start_to_close,
                schedule_to_close,
                heartbeat,
                retry_policy,
            )
        )
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise Canceled("the workflow task was canceled") from None

    async def aexecute_activity(
        self,
        activity_type: str,
        input: Any = None,  # noqa: A002
        *,
        activity_id: str | None = None,
        task_queue: str | None = None,
        start_to_close: Any = None,
        schedule_to_close: Any = None,
        heartbeat: Any = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> Any:
        """``execute_activity`` for coroutine handlers."""
        worker = self._run.worker
        assert worker._conn is not None
        return await worker._conn.hop(
            worker._execute_activity(
                self._run,
                activity_type,
                input,
                activity_id,
                task_queue,
                start_to_close,
                schedule_to_close,
                heartbeat,
                retry_policy,
            )
        )


class ActivityContext(_ContextBase):
    """The running activity task: ids, attempt, previous heartbeat details, cancel."""

    def __init__(self, run: Run) -> None:
        super().__init__(run)
        b = run.body
        self.activity_id: str = push_str(b, "activity_id")
        self.activity_type: str = push_str(b, "activity_type")
        self.attempt: int = push_int(b, "attempt", 1)
        self.heartbeat_details: Any = b.get("heartbeat_details")
        self.input: Any = b.get("input")

    def __repr__(self) -> str:
        return (
            f"<ActivityContext {self.activity_type} id={self.activity_id} attempt={self.attempt}>"
        )


class Outcome:
    __slots__ = ("kind", "value", "exc")

    def __init__(self, kind: str, value: Any = None, exc: BaseException | None = None) -> None:
        self.kind = kind  # "ok" | "error" | "canceled"
        self.value = value
        self.exc = exc
