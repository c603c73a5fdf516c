"""``tasks.Worker``: runs workflow (and activity) handlers pushed over ZAP (SPEC §3).

A worker subscribes (0x00A0 / 0x00A1) on its client's ZAP connection and the
server *pushes* tasks to it (0xB0 / 0xB1): there is no polling. For each push
the worker answers a push-ack at once, 200 when it has a free slot and 429
otherwise, so that the server can give the task to someone else instead of
waiting for a lease to expire. An accepted task then runs its handler, keeps
its lease alive with heartbeats (0x00A5), and reports the outcome:

* workflow task -> 0x00A2 RespondWorkflowTaskCompleted with one command,
  ``CompleteWorkflowExecution{result}``, ``FailWorkflowExecution{failure}`` or
  ``CancelWorkflowExecution`` (the task-style model: one handler call is the
  whole workflow);
* activity task -> 0x00A3 RespondActivityTaskCompleted or 0x00A4
  RespondActivityTaskFailed.

Why the loops are arranged as they are: all protocol work happens on the
client's ZAP loop (one thread, no locks around protocol state). Coroutine
handlers run on that loop too, or on the caller's loop under ``await
w.run()`` (their resources usually belong to it); sync handlers run on a
thread pool of ``max_concurrent`` threads, so a slow handler stalls neither
the socket nor the other handlers.

Handlers run at least once: a task whose lease expired (worker too slow,
connection lost for too long) is redelivered, and the stale worker learns it
from a 404 on heartbeat or respond, then stays silent (SPEC §5.2).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.thread
import contextvars
import datetime
import inspect
import io
import json
import logging
import random
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgpack
from hanzo_tasks._local import is_async, wants_arg
from hanzo_tasks.errors import (
    ActivityError,
    Canceled,
    FailedPrecondition,
    InvalidArgument,
    NonRetryableError,
    NotFound,
    RateLimited,
    TasksError,
    Timeout,
    TooLarge,
    Unavailable,
)
from hanzo_tasks.protocol import wire
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.durations import parse_duration
from hanzo_tasks.protocol.names import is_id, is_namespace
from hanzo_tasks.zap import ZapConnection, default_identity

if TYPE_CHECKING:
    from hanzo_tasks.client import Client

__all__ = ["ActivityContext", "TaskContext", "Worker", "context"]

log = logging.getLogger("hanzo_tasks.worker")

MIN_WORKFLOW_HEARTBEAT_S = 1.0
"""Workflow-task heartbeats: every max(this, task_timeout/3) (SPEC §3)."""
MIN_ACTIVITY_HEARTBEAT_S = 0.1
"""Activity heartbeats: every max(this, heartbeat_timeout/2), when one is set."""
DEFAULT_TASK_TIMEOUT_MS = 10_000
"""The server's default workflowTaskTimeout (§5.3), used when a push omits it."""
REQUEST_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
RESPOND_RETRY_S = 120.0
"""How long a finished handler keeps trying to report through a connection
outage; past that its lease has expired anyway and the task was redelivered."""
MAX_HISTORY_PAGES = 1000

_current: contextvars.ContextVar[TaskContext | ActivityContext | None] = contextvars.ContextVar(
    "tasks_context", default=None
)
_in_pool = threading.local()  # set on pool threads while they run a handler


def context() -> TaskContext | ActivityContext:
    """The context of the task the caller runs in; ``FailedPrecondition`` outside a handler.

    A context variable, so it follows the handler into the coroutines it
    awaits and is invisible to other handlers running at the same time.
    """
    ctx = _current.get()
    if ctx is None:
        raise FailedPrecondition("tasks.context() is only available inside a task handler")
    return ctx


# ---------------------------------------------------------------------------
# helpers


def _json_value(value: Any) -> Any:
    """``value`` as the JSON it will travel as; TypeError/ValueError if it cannot.

    Round-tripping through ``json`` gives exactly what an HTTP client would
    store (tuples become lists, int keys become strings), and the msgpack
    check catches what JSON accepts but a ZAP body cannot hold (ints over 64 bits).
    """
    out = json.loads(json.dumps(value, allow_nan=False))
    msgpack.packb(out, use_bin_type=True)
    return out


def _failure(
    exc: BaseException, *, type_name: str | None = None, non_retryable: bool | None = None
) -> dict[str, Any]:
    """SPEC §3 failure mapping: message, class name, non_retryable, stack trace."""
    failure: dict[str, Any] = {
        "message": str(exc) or type(exc).__name__,
        "type": type_name or type(exc).__name__,
        "non_retryable": isinstance(exc, NonRetryableError)
        if non_retryable is None
        else non_retryable,
        "stack_trace": _stack_trace(exc),
    }
    if isinstance(exc, TasksError) and exc.details:
        try:
            failure["details"] = _json_value(exc.details)
        except (TypeError, ValueError, OverflowError):
            pass
    return failure


_PLUMBING = {__file__, concurrent.futures.thread.__file__}


def _stack_trace(exc: BaseException) -> str:
    """The exception's traceback without the worker's own frames, which say nothing."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename in _PLUMBING:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _duration_ms(value: Any, what: str) -> int | None:
    """Seconds (int/float), a timedelta or a Go duration string -> positive ms."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a duration, not a bool")
    if isinstance(value, datetime.timedelta):
        ms = int(value.total_seconds() * 1000)
    elif isinstance(value, int | float):
        ms = int(value * 1000)
    elif isinstance(value, str):
        try:
            ms = parse_duration(value.strip())
        except ValueError as e:
            raise InvalidArgument(f"invalid {what}: {e}") from None
    else:
        raise InvalidArgument(f"{what} must be seconds, a timedelta or a duration string")
    if ms <= 0:
        raise InvalidArgument(f"{what} must be positive")
    return ms


def zap_retry_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """A RetryPolicy (HTTP camelCase, durations as strings) in its ZAP form (§8.4).

    snake_case keys are passed through, so either spelling works on either
    transport's public API.
    """
    return wire.to_zap(policy, wire.RETRY_POLICY, _retry_interval_ms)


def _retry_interval_ms(value: Any, field: wire.WireField) -> Any:
    if isinstance(value, str):
        try:
            return parse_duration(value.strip())
        except ValueError as e:
            raise InvalidArgument(f"invalid retry_policy.{field.camel}: {e}") from None
    return _duration_ms(value, f"retry_policy.{field.camel}")


def _signals(history: Any) -> list[dict[str, Any]]:
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


def _str(body: dict[str, Any], key: str, default: str = "") -> str:
    v = body.get(key)
    return v if isinstance(v, str) else default


def _int(body: dict[str, Any], key: str, default: int = 0) -> int:
    v = body.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


# ---------------------------------------------------------------------------
# contexts


class _Run:
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

    def __init__(self, run: _Run) -> None:
        self._run = run
        b = run.body
        self.namespace: str = _str(b, "namespace", run.worker.namespace)
        self.task_queue: str = _str(b, "task_queue", run.worker.task_queue)
        self.workflow_id: str = _str(b, "workflow_id")
        self.run_id: str = _str(b, "run_id")
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
                details = _json_value(details)
            except (TypeError, ValueError, OverflowError) as e:
                raise InvalidArgument(f"heartbeat details are not JSON: {e}") from None
            run.heartbeat_details = details
        worker = run.worker
        conn = worker._conn
        if conn is None:
            return
        coro = worker._heartbeat_once(run, details)
        if conn.in_loop_thread():
            conn.spawn(coro)
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            try:
                conn.submit(coro).result(REQUEST_TIMEOUT_S + 1.0)
            except concurrent.futures.TimeoutError:
                pass
            return
        conn.submit(coro)  # a coroutine on another loop: fire and forget


class TaskContext(_ContextBase):
    """The running workflow task (SPEC §3): ids, attempts, signals, cancel, queries.

    ``signals`` lists the ``{name, input}`` of the WORKFLOW_EXECUTION_SIGNALED
    events in the delivered history, so a task-style handler can react to the
    signals that arrived before it ran.
    """

    def __init__(self, run: _Run) -> None:
        super().__init__(run)
        b = run.body
        self.workflow_type: str = _str(b, "workflow_type")
        self.attempt: int = _int(b, "workflow_attempt", 1)
        self.task_attempt: int = _int(b, "attempt", 1)
        self.input: Any = b.get("input")
        self.signals: list[dict[str, Any]] = _signals(b.get("history"))

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

    def __init__(self, run: _Run) -> None:
        super().__init__(run)
        b = run.body
        self.activity_id: str = _str(b, "activity_id")
        self.activity_type: str = _str(b, "activity_type")
        self.attempt: int = _int(b, "attempt", 1)
        self.heartbeat_details: Any = b.get("heartbeat_details")
        self.input: Any = b.get("input")

    def __repr__(self) -> str:
        return (
            f"<ActivityContext {self.activity_type} id={self.activity_id} attempt={self.attempt}>"
        )


class _Outcome:
    __slots__ = ("kind", "value", "exc")

    def __init__(self, kind: str, value: Any = None, exc: BaseException | None = None) -> None:
        self.kind = kind  # "ok" | "error" | "canceled"
        self.value = value
        self.exc = exc


# ---------------------------------------------------------------------------
# the worker


MAX_STICKY_RUNS = 10_000


class Worker:
    """Runs registered handlers for tasks the server pushes over ZAP (SPEC §3).

    ``start()`` runs it in the background (on the client's ZAP thread) and
    returns once subscribed; ``await run()`` runs it until ``stop()``, with
    coroutine handlers on the caller's loop. A worker is used once: after
    ``stop()`` build a new one.
    """

    def __init__(
        self,
        client: Client,
        task_queue: str = "tasks",
        *,
        max_concurrent: int = 10,
        max_concurrent_activities: int | None = None,
        identity: str | None = None,
        namespace: str | None = None,
    ) -> None:
        from hanzo_tasks.client import Client  # import cycle: client imports this module lazily

        if not isinstance(client, Client):
            raise InvalidArgument(f"Worker needs a tasks.Client, not {type(client).__name__}")
        if client.mode != "remote":
            raise FailedPrecondition(
                "a Worker needs a remote client (tasks_url or zap_addr); local mode runs fns itself"
            )
        if not is_id(task_queue):
            raise InvalidArgument(f"invalid task queue {task_queue!r}")
        for what, n in (
            ("max_concurrent", max_concurrent),
            ("max_concurrent_activities", max_concurrent_activities),
        ):
            if n is not None and (
                isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000
            ):
                raise InvalidArgument(f"{what} must be an int in 1..1000, got {n!r}")
        identity = identity if identity is not None else default_identity()
        if not is_id(identity):
            raise InvalidArgument(f"invalid worker identity {identity!r}")
        namespace = namespace if namespace is not None else client.namespace
        if not is_namespace(namespace):
            raise InvalidArgument(f"invalid namespace {namespace!r}")

        self.client = client
        self.task_queue: str = task_queue
        self.max_concurrent: int = max_concurrent
        self.max_concurrent_activities: int = max_concurrent_activities or max_concurrent
        self.identity: str = identity
        self.namespace: str = namespace

        self._lock = threading.Lock()
        self._state = "new"  # new -> starting -> running -> stopping -> stopped
        self._workflows: dict[str, Callable[..., Any]] = {}
        self._activities: dict[str, Callable[..., Any]] = {}
        self._conn: ZapConnection | None = None
        self._handler_loop: asyncio.AbstractEventLoop | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._activity_pool: concurrent.futures.ThreadPoolExecutor | None = None
        # loop-side state
        self._sub_lock: asyncio.Lock | None = None
        self._sub_gen = 0
        self._wf_sub: str | None = None
        self._act_sub: str | None = None
        self._runs: dict[str, _Run] = {}
        # Signals seen per run, for sticky deliveries that carry only the new
        # events (SPEC §5.6 ``full_history: false``); oldest runs forgotten first.
        self._seen_signals: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._busy = {"workflow": 0, "activity": 0}
        self._activity_waiters: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._done_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._stop_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<tasks.Worker tq={self.task_queue} ns={self.namespace} {self._state}>"

    @property
    def running(self) -> bool:
        return self._state == "running"

    @property
    def subscription_ids(self) -> dict[str, str]:
        """The current subscriptions: ``{"workflow": id, "activity": id}`` (those present)."""
        out = {}
        if self._wf_sub:
            out["workflow"] = self._wf_sub
        if self._act_sub:
            out["activity"] = self._act_sub
        return out

    # -- registration ----------------------------------------------------------

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Run ``fn`` for workflow type ``name``: ``fn()`` or ``fn(input)``.

        After ``start`` this re-subscribes with the new type list.
        """
        self._register(self._workflows, name, fn, "workflow type")

    def register_activity(self, name: str, fn: Callable[..., Any]) -> None:
        """Run ``fn`` for activity type ``name``: ``fn()`` or ``fn(input)``."""
        self._register(self._activities, name, fn, "activity type")

    def _register(
        self, table: dict[str, Callable[..., Any]], name: str, fn: Callable[..., Any], what: str
    ) -> None:
        if not is_id(name):
            raise InvalidArgument(f"invalid {what} {name!r}")
        if not callable(fn):
            raise InvalidArgument(f"the handler for {what} {name!r} must be callable")
        with self._lock:
            if self._state in ("stopping", "stopped"):
                raise FailedPrecondition("worker stopped")
            new_type = name not in table
            table[name] = fn
            running = self._state == "running"
        if running and new_type:
            self._resubscribe()

    def _set_workflows(self, fns: dict[str, Callable[..., Any]]) -> None:
        """Make the workflow registry exactly ``fns`` (the client's embedded worker)."""
        with self._lock:
            changed = set(fns) != set(self._workflows)
            self._workflows = dict(fns)
            running = self._state == "running"
        if running and changed:
            self._resubscribe()

    def _resubscribe(self) -> None:
        conn = self._conn
        if conn is None:
            return
        if conn.in_loop_thread():
            conn.spawn(self._subscribe(update=True))
            return
        fut = conn.submit(self._subscribe(update=True))
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            fut.result(START_TIMEOUT_S)  # sync caller: see failures, and order with what follows

    # -- start / run / stop -------------------------------------------------------

    def start(self) -> None:
        """Subscribe and run in the background; returns once subscribed, raises on failure."""
        self._begin()
        try:
            conn = self._connection()
            if conn.in_loop_thread():
                raise FailedPrecondition(
                    "start() cannot block the ZAP loop; use `await worker.run()`"
                )
            fut = conn.submit(self._astart())
            try:
                fut.result(START_TIMEOUT_S)
            except concurrent.futures.TimeoutError:
                fut.cancel()
                raise Timeout(f"worker not subscribed within {START_TIMEOUT_S:g}s") from None
        except BaseException:
            self._reset()
            raise

    async def run(self) -> None:
        """Subscribe and serve until ``stop()``; coroutine handlers run on this loop.

        Cancelling ``run()`` stops the worker (waiting for running handlers as
        ``stop()`` does, with its default timeout).
        """
        loop = asyncio.get_running_loop()
        self._begin()
        self._handler_loop = loop
        try:
            conn = await asyncio.to_thread(self._connection)
            await conn.hop(self._astart())
        except BaseException:
            self._reset()
            raise
        done: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._state == "stopped":
                return
            self._done_waiters.append((loop, done))
        try:
            await done
        except asyncio.CancelledError:
            await self.astop()
            raise

    def stop(self, timeout: float = 30.0) -> None:
        """Unsubscribe, wait up to ``timeout`` s for running handlers, cancel the rest.

        Their tasks are redelivered once their leases expire. Called from
        inside a handler (or the worker's loop) it cannot wait for itself: it
        then starts the same shutdown and returns at once.
        """
        conn = self._prepare_stop()
        if conn is None:
            return
        if self._must_not_wait(conn):
            if conn.in_loop_thread():
                conn.spawn(self._astop(timeout))
            else:
                conn.submit(self._astop(timeout))
            return
        fut = conn.submit(self._astop(timeout))
        try:
            fut.result(max(0.0, timeout) + 15.0)
        except concurrent.futures.TimeoutError:
            log.warning("worker stop did not finish in time")

    async def astop(self, timeout: float = 30.0) -> None:
        """``stop`` for coroutines."""
        conn = self._prepare_stop()
        if conn is None:
            return
        ctx = _current.get()
        if ctx is not None and ctx._run.worker is self:
            # Inside one of our own handlers: waiting for the handlers would wait for itself.
            if conn.in_loop_thread():
                conn.spawn(self._astop(timeout))
            else:
                conn.submit(self._astop(timeout))
            return
        await conn.hop(self._astop(timeout))

    def _begin(self) -> None:
        with self._lock:
            if self._state == "stopped" or self._state == "stopping":
                raise FailedPrecondition("worker stopped; build a new one")
            if self._state != "new":
                raise FailedPrecondition("worker already started")
            self._state = "starting"

    def _reset(self) -> None:
        """A failed start leaves the worker as new, so that it can be started again."""
        conn = self._conn
        if conn is not None:
            conn.remove_push_route(self)
            conn.remove_reconnect_hook(self._on_reconnect)
        with self._lock:
            if self._state in ("starting", "running"):
                self._state = "new"
        self._handler_loop = None

    def _connection(self) -> ZapConnection:
        if self._conn is None:
            self._conn = self.client._worker_connection()
        return self._conn

    def _prepare_stop(self) -> ZapConnection | None:
        with self._lock:
            if self._state == "new":
                self._state = "stopped"
                return None
            if self._state == "stopped":
                return None
        return self._conn

    def _must_not_wait(self, conn: ZapConnection) -> bool:
        if conn.in_loop_thread() or getattr(_in_pool, "worker", None) is self:
            return True
        ctx = _current.get()
        if ctx is not None and ctx._run.worker is self:
            return True
        loop = self._handler_loop
        if loop is not None:
            try:
                return asyncio.get_running_loop() is loop
            except RuntimeError:
                return False
        return False

    async def _astart(self) -> None:
        conn = self._conn
        assert conn is not None
        if self._sub_lock is None:
            self._sub_lock = asyncio.Lock()
        if not self._workflows and not self._activities and self.client.handler is None:
            raise FailedPrecondition(
                "nothing to run: register a workflow or activity (or give the client a handler)"
            )
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.max_concurrent, thread_name_prefix="tasks-worker"
            )
        if self._activities and self._activity_pool is None:
            self._activity_pool = concurrent.futures.ThreadPoolExecutor(
                self.max_concurrent_activities, thread_name_prefix="tasks-activity"
            )
        with self._lock:
            self._state = "running"
        conn.add_push_route(self)
        conn.add_reconnect_hook(self._on_reconnect)
        await self._subscribe(update=False)
        log.info(
            "worker %s subscribed on %s (%s)", self.identity, self.task_queue, self.subscription_ids
        )

    async def _subscribe(self, *, update: bool) -> None:
        """Subscribe on the current session (0x00A0, 0x00A1), or update the subscriptions.

        Subscriptions belong to a session (§8.4), so a new session generation
        means subscribing afresh; ``update`` re-sends the type list on the same
        session with ``subscription_id``.
        """
        conn = self._conn
        assert conn is not None and self._sub_lock is not None
        async with self._sub_lock:
            if self._state not in ("running", "starting"):
                return
            s = await conn.asession()
            if s.generation != self._sub_gen:
                self._wf_sub = self._act_sub = None
            elif not update and (self._wf_sub or self._act_sub):
                return
            with self._lock:
                workflow_types = sorted(self._workflows)
                activity_types = sorted(self._activities)
            if workflow_types or self.client.handler is not None:
                body: dict[str, Any] = {
                    "task_queue": self.task_queue,
                    "max_concurrent": self.max_concurrent,
                    "identity": self.identity,
                    "namespace": self.namespace,
                }
                if self.client.handler is None:
                    body["types"] = workflow_types
                if self._wf_sub:
                    body["subscription_id"] = self._wf_sub
                ans = await conn.arequest(s, Z.Op.SubscribeWorkflowTasks, body, REQUEST_TIMEOUT_S)
                self._wf_sub = self._subscription_id(ans)
            elif self._wf_sub:
                await self._unsubscribe_one(s, self._wf_sub)
                self._wf_sub = None
            if activity_types:
                if self._activity_pool is None:
                    self._activity_pool = concurrent.futures.ThreadPoolExecutor(
                        self.max_concurrent_activities, thread_name_prefix="tasks-activity"
                    )
                body = {
                    "task_queue": self.task_queue,
                    "max_concurrent": self.max_concurrent_activities,
                    "identity": self.identity,
                    "namespace": self.namespace,
                    "types": activity_types,
                }
                if self._act_sub:
                    body["subscription_id"] = self._act_sub
                ans = await conn.arequest(s, Z.Op.SubscribeActivityTasks, body, REQUEST_TIMEOUT_S)
                self._act_sub = self._subscription_id(ans)
            self._sub_gen = s.generation

    @staticmethod
    def _subscription_id(ans: Any) -> str:
        sid = ans.get("subscription_id") if isinstance(ans, dict) else None
        if not isinstance(sid, str) or not sid:
            raise Unavailable("subscribe answer carries no subscription_id")
        return sid

    async def _unsubscribe_one(self, s: Any, sid: str) -> None:
        assert self._conn is not None
        try:
            await self._conn.arequest(
                s, Z.Op.Unsubscribe, {"subscription_id": sid}, REQUEST_TIMEOUT_S
            )
        except TasksError as e:
            log.debug("unsubscribe %s: %s", sid, e)

    async def _on_reconnect(self, generation: int) -> None:
        """A new session: subscribe again. Running handlers just carry on."""
        conn = self._conn
        delay = 0.1
        while (
            self._state == "running"
            and conn is not None
            and conn.generation == generation
            and conn.connected
        ):
            try:
                await self._subscribe(update=False)
                return
            except (Unavailable, RateLimited, Timeout) as e:
                log.debug("re-subscribe failed (%s); retrying", e)
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, 5.0)
            except TasksError as e:
                log.error("worker %s cannot re-subscribe: %s", self.identity, e)
                return

    async def _astop(self, timeout: float) -> None:
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._shutdown(timeout))
        await asyncio.shield(self._stop_task)

    async def _shutdown(self, timeout: float) -> None:
        conn = self._conn
        assert conn is not None
        with self._lock:
            self._state = "stopping"
        conn.remove_reconnect_hook(self._on_reconnect)
        s = conn._session
        if s is not None and not s.closed and s.generation == self._sub_gen:
            for sid in (self._wf_sub, self._act_sub):
                if sid:
                    await self._unsubscribe_one(s, sid)
        self._wf_sub = self._act_sub = None
        tasks = [r.task for r in self._runs.values() if r.task is not None]
        if tasks and timeout > 0:
            await asyncio.wait(tasks, timeout=timeout)
        left = [r for r in self._runs.values() if r.task is not None and not r.task.done()]
        for r in left:
            r.abandoned = True
            for w in list(r.waiters):
                w.cancel()
            r.task.cancel()  # type: ignore[union-attr]
        if left:
            await asyncio.gather(
                *(r.task for r in left if r.task is not None), return_exceptions=True
            )
            log.warning(
                "worker %s stopped with %d handler(s) still running; they will be redelivered",
                self.identity,
                len(left),
            )
        conn.remove_push_route(self)
        for pool in (self._pool, self._activity_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._state = "stopped"
            waiters, self._done_waiters = self._done_waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(lambda f=fut: f.done() or f.set_result(None))

    # -- pushes (on the ZAP loop) ------------------------------------------------

    def push_claim(self, opcode: int, body: dict[str, Any]) -> int:
        if self._state not in ("running", "stopping"):
            return 0
        if opcode == Z.Op.DeliverWorkflowTask:
            return self._claim_delivery(body, self._wf_sub, "workflow_type", self._handles_workflow)
        if opcode == Z.Op.DeliverActivityTask:
            return self._claim_delivery(
                body, self._act_sub, "activity_type", lambda t: t in self._activities
            )
        if opcode == Z.Op.DeliverActivityResult:
            key = (_str(body, "run_id"), _str(body, "activity_id"))
            return 2 if key in self._activity_waiters else 0
        if opcode == Z.Op.DeliverCancelRequest:
            return 2 if _str(body, "task_token") in self._runs else 0
        if opcode == Z.Op.DeliverQuery:
            if self._find_query_run(body) is not None:
                return 2
            return 1 if self._handles_workflow(_str(body, "workflow_type")) else 0
        return 0

    def _claim_delivery(
        self, body: dict[str, Any], sub: str | None, type_key: str, handles: Callable[[str], bool]
    ) -> int:
        sid = body.get("subscription_id")
        if sub is not None and sid == sub:
            return 2
        # A push can overtake the subscribe answer it belongs to (both are read
        # before the subscriber resumes): a task on our queue that we handle is
        # ours too, unless another route knows the subscription id exactly.
        same_queue = body.get("task_queue") in (None, self.task_queue)
        same_ns = body.get("namespace") in (None, self.namespace)
        return 1 if same_queue and same_ns and handles(_str(body, type_key)) else 0

    def _handles_workflow(self, workflow_type: str) -> bool:
        return workflow_type in self._workflows or self.client.handler is not None

    def on_push(self, opcode: int, body: dict[str, Any]) -> dict[str, Any]:
        if opcode == Z.Op.DeliverWorkflowTask:
            return self._accept(body, "workflow")
        if opcode == Z.Op.DeliverActivityTask:
            return self._accept(body, "activity")
        if opcode == Z.Op.DeliverActivityResult:
            fut = self._activity_waiters.get((_str(body, "run_id"), _str(body, "activity_id")))
            if fut is not None and not fut.done():
                fut.set_result(body)
            return Z.push_ack_body(200)
        if opcode == Z.Op.DeliverCancelRequest:
            run = self._runs.get(_str(body, "task_token"))
            if run is not None:
                run.request_cancel()
            return Z.push_ack_body(200)
        if opcode == Z.Op.DeliverQuery:
            self._spawn(self._answer_query(self._find_query_run(body), body))
            return Z.push_ack_body(200)
        return Z.push_ack_body(400, {"code": "invalid_argument", "message": "unexpected push"})

    def _accept(self, body: dict[str, Any], kind: str) -> dict[str, Any]:
        if self._state != "running":
            return Z.push_ack_body(429, {"code": "rate_limited", "message": "worker stopping"})
        limit = self.max_concurrent if kind == "workflow" else self.max_concurrent_activities
        if self._busy[kind] >= limit:
            return Z.push_ack_body(429, {"code": "rate_limited", "message": "no free slot"})
        token = body.get("task_token")
        if not isinstance(token, str) or not token:
            return Z.push_ack_body(
                400, {"code": "invalid_argument", "message": "task_token missing"}
            )
        if token in self._runs:
            return Z.push_ack_body(200)  # the same task again: already running it
        type_key = "workflow_type" if kind == "workflow" else "activity_type"
        ttype = _str(body, type_key)
        fn = self._workflows.get(ttype) if kind == "workflow" else self._activities.get(ttype)
        if fn is None and not (kind == "workflow" and self.client.handler is not None):
            return Z.push_ack_body(
                400,
                {"code": "invalid_argument", "message": f"no handler for {kind} type {ttype!r}"},
            )
        run = _Run(self, kind, body)
        run.ctx = TaskContext(run) if kind == "workflow" else ActivityContext(run)
        self._runs[token] = run
        self._busy[kind] += 1
        coro = self._run_workflow(run) if kind == "workflow" else self._run_activity(run)
        run.task = self._spawn(coro)
        return Z.push_ack_body(200)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        assert self._conn is not None
        return self._conn.spawn(coro)

    def _release(self, run: _Run) -> None:
        if self._runs.get(run.token) is run:
            del self._runs[run.token]
            self._busy[run.kind] -= 1

    # -- running handlers -------------------------------------------------------

    def _call_for(self, run: _Run) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        b = run.body
        inp = b.get("input")
        if run.kind == "workflow":
            wtype = _str(b, "workflow_type")
            fn = self._workflows.get(wtype)
            if fn is None:
                handler = self.client.handler
                assert handler is not None
                return handler, (wtype, inp)
        else:
            fn = self._activities[_str(b, "activity_type")]
        return fn, ((inp,) if wants_arg(fn) else ())

    async def _run_workflow(self, run: _Run) -> None:
        try:
            ctx = run.ctx
            assert isinstance(ctx, TaskContext)
            key = (ctx.workflow_id, ctx.run_id)
            if run.body.get("full_history") is False:
                earlier = self._seen_signals.get(key)
                if earlier is None:  # not cached here (a restart): page the whole history
                    ctx.signals = []
                    await self._page_signals(run, after=0)
                else:
                    ctx.signals = earlier + ctx.signals
                    if run.body.get("history_truncated"):
                        await self._page_signals(run)
            elif run.body.get("history_truncated"):
                await self._page_signals(run)
            self._seen_signals.pop(key, None)
            self._seen_signals[key] = list(ctx.signals)
            while len(self._seen_signals) > MAX_STICKY_RUNS:
                self._seen_signals.pop(next(iter(self._seen_signals)))
            fn, args = self._call_for(run)
            timeout_ms = (
                _int(run.body, "task_timeout_ms", DEFAULT_TASK_TIMEOUT_MS)
                or DEFAULT_TASK_TIMEOUT_MS
            )
            interval = max(MIN_WORKFLOW_HEARTBEAT_S, timeout_ms / 3000.0)
            outcome = await self._execute(run, fn, args, interval)
            if outcome is None:
                return
            command = self._workflow_command(outcome)
            # The server frees the slot as soon as it applies the completion and
            # may push the next task before our answer arrives: free it first.
            self._release(run)
            await self._respond_workflow(run, command)
        finally:
            self._release(run)

    def _workflow_command(self, outcome: _Outcome) -> dict[str, Any]:
        if outcome.kind == "canceled":
            return {"type": "CancelWorkflowExecution"}
        if outcome.kind == "error":
            assert outcome.exc is not None
            return {"type": "FailWorkflowExecution", "failure": _failure(outcome.exc)}
        try:
            result = _json_value(outcome.value)
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            return {
                "type": "FailWorkflowExecution",
                "failure": _failure(e, type_name="SerializationError", non_retryable=True)
                | {"message": f"result is not JSON-serializable: {e}"},
            }
        return {"type": "CompleteWorkflowExecution", "result": result}

    async def _respond_workflow(self, run: _Run, command: dict[str, Any]) -> bool:
        body = {"task_token": run.token, "commands": [command], "identity": self.identity}
        try:
            return await self._respond(Z.Op.RespondWorkflowTaskCompleted, body, run)
        except TooLarge as e:
            # The result does not fit: fail the run rather than let the task
            # time out and be retried into the same wall forever.
            fail = {
                "type": "FailWorkflowExecution",
                "failure": {
                    "message": f"result too large: {e.message}",
                    "type": "TooLarge",
                    "non_retryable": True,
                },
            }
            body["commands"] = [fail]
            return await self._respond(Z.Op.RespondWorkflowTaskCompleted, body, run)

    async def _run_activity(self, run: _Run) -> None:
        try:
            fn, args = self._call_for(run)
            hb_ms = _int(run.body, "heartbeat_timeout_ms")
            interval = max(MIN_ACTIVITY_HEARTBEAT_S, hb_ms / 2000.0) if hb_ms > 0 else None
            outcome = await self._execute(run, fn, args, interval)
            if outcome is None:
                return
            base = {"task_token": run.token, "identity": self.identity}
            if outcome.kind == "ok":
                try:
                    result = _json_value(outcome.value)
                except (TypeError, ValueError, OverflowError, RecursionError) as e:
                    failure = _failure(e, type_name="SerializationError", non_retryable=True)
                    failure["message"] = f"result is not JSON-serializable: {e}"
                    await self._respond(
                        Z.Op.RespondActivityTaskFailed, base | {"failure": failure}, run
                    )
                    return
                await self._respond(
                    Z.Op.RespondActivityTaskCompleted, base | {"result": result}, run
                )
            elif outcome.kind == "canceled":
                failure = {"message": "canceled", "type": "CanceledError", "non_retryable": True}
                await self._respond(
                    Z.Op.RespondActivityTaskFailed, base | {"failure": failure}, run
                )
            else:
                assert outcome.exc is not None
                await self._respond(
                    Z.Op.RespondActivityTaskFailed, base | {"failure": _failure(outcome.exc)}, run
                )
        finally:
            self._release(run)

    async def _execute(
        self, run: _Run, fn: Callable[..., Any], args: tuple[Any, ...], heartbeat_s: float | None
    ) -> _Outcome | None:
        """Run the handler with heartbeats; the outcome, or None when nothing must be sent."""
        loop = asyncio.get_running_loop()
        hb = loop.create_task(self._heartbeat_loop(run, heartbeat_s)) if heartbeat_s else None
        try:
            try:
                if is_async(fn):
                    run.handler = self._start_async(run, lambda: fn(*args))
                else:
                    pool = self._pool if run.kind == "workflow" else self._activity_pool
                    try:
                        run.handler = loop.run_in_executor(pool, self._sync_entry, run, fn, args)
                    except RuntimeError:  # the pool is shut down: the worker is stopping
                        return None
                if run.cancel_requested:
                    run._cancel_handler()  # delivered for a run already being canceled
                value = await run.handler
                if inspect.isawaitable(value):  # a sync fn that returned a coroutine
                    awaitable = value
                    run.handler = self._start_async(run, lambda: awaitable)
                    if run.cancel_requested:
                        run._cancel_handler()
                    value = await run.handler
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if run.abandoned or (task is not None and task.cancelling()):
                    raise  # stop(): abandon quietly, the lease expires, the task is redelivered
                if run.stale:
                    return None
                if run.cancel_requested:
                    return _Outcome("canceled")
                return _Outcome("error", exc=asyncio.CancelledError("the handler was cancelled"))
            except Canceled:
                return None if run.stale else _Outcome("canceled")
            except Exception as e:  # noqa: BLE001 - any handler failure is an outcome
                return None if run.stale else _Outcome("error", exc=e)
            except BaseException as e:  # noqa: BLE001 - SystemExit & co raised by a sync handler
                return None if run.stale else _Outcome("error", exc=e)
            if run.stale or run.abandoned:
                return None
            return _Outcome("ok", value=value)
        finally:
            run.finished = True
            if hb is not None:
                hb.cancel()

    def _start_async(self, run: _Run, make: Callable[[], Any]) -> asyncio.Future[Any]:
        """The handler's coroutine as a future on the ZAP loop, run on the handler loop."""
        run.is_async = True
        coro = self._async_entry(run, make)
        loop = self._handler_loop
        if loop is None or loop is asyncio.get_running_loop():
            return asyncio.ensure_future(coro)
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    @staticmethod
    async def _async_entry(run: _Run, make: Callable[[], Any]) -> Any:
        _current.set(run.ctx)  # this task's own context copy
        run.async_task = asyncio.current_task()
        run.handler_loop = asyncio.get_running_loop()
        return await make()

    def _sync_entry(self, run: _Run, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        token = _current.set(run.ctx)
        _in_pool.worker = self
        run.thread_ident = threading.get_ident()
        try:
            return fn(*args)
        finally:
            run.thread_ident = None
            _in_pool.worker = None
            _current.reset(token)

    async def _heartbeat_loop(self, run: _Run, interval: float) -> None:
        while not (run.stale or run.finished):
            await asyncio.sleep(interval)
            if run.stale or run.finished:
                return
            await self._heartbeat_once(
                run, run.heartbeat_details if run.kind == "activity" else None
            )

    async def _heartbeat_once(self, run: _Run, details: Any) -> None:
        """0x00A5; ``cancel_requested`` cancels, 404 means the task is not ours any more."""
        if run.stale or run.finished or self._conn is None:
            return
        body: dict[str, Any] = {"task_token": run.token}
        if details is not None:
            body["details"] = details
        try:
            ans = await self._conn.acall(Z.Op.RecordHeartbeat, body, REQUEST_TIMEOUT_S)
        except NotFound:
            log.info(
                "%s task %s is no longer current; cancelling its handler",
                run.kind,
                run.ctx.workflow_id or run.token[:16],
            )
            run.mark_stale()
            return
        except TasksError as e:
            log.debug("heartbeat failed: %s", e)
            return
        if isinstance(ans, dict) and ans.get("cancel_requested") is True:
            run.request_cancel()

    async def _respond(self, opcode: int, body: dict[str, Any], run: _Run) -> bool:
        """Send a task's outcome, through reconnects; True once the server took it.

        404 (stale) and other rejections end it: the server's state wins.
        Retrying after a lost answer is safe: a token applies at most once, so a
        repeat is at worst a 404.
        """
        conn = self._conn
        assert conn is not None
        deadline = time.monotonic() + RESPOND_RETRY_S
        delay = 0.1
        name = Z.opcode_name(opcode)
        while True:
            try:
                await conn.acall(opcode, body, REQUEST_TIMEOUT_S)
                return True
            except NotFound:
                log.info("%s: the task is no longer current; result dropped", name)
                return False
            except TooLarge:
                raise
            except (Unavailable, RateLimited, Timeout) as e:
                left = deadline - time.monotonic()
                if left <= 0 or conn.closed:
                    log.warning("%s not delivered (%s); the task will be redelivered", name, e)
                    return False
                wait = e.retry_after if isinstance(e, RateLimited) and e.retry_after else delay
                await asyncio.sleep(min(left, wait * random.uniform(0.8, 1.2)))
                delay = min(delay * 2, 5.0)
            except TasksError as e:
                log.error("%s rejected: %s (%s)", name, e, e.details or "")
                return False

    async def _page_signals(self, run: _Run, after: int | None = None) -> None:
        """A truncated or partial history (§5.6): page the rest (0x0066) so ``signals`` is complete.

        ``after``: page from this event id (0: the whole history) instead of
        from the last delivered event.
        """
        assert self._conn is not None
        ctx = run.ctx
        assert isinstance(ctx, TaskContext)
        history = run.body.get("history")
        events = history if isinstance(history, list) else []
        if after is None:
            after = max(
                (
                    e.get("eventId", 0)
                    for e in events
                    if isinstance(e, dict) and isinstance(e.get("eventId"), int)
                ),
                default=0,
            )
        page_token: Any = None
        more: list[Any] = []
        try:
            for _ in range(MAX_HISTORY_PAGES):
                req: dict[str, Any] = {
                    "workflow_id": ctx.workflow_id,
                    "run_id": ctx.run_id,
                    "after_event_id": after,
                }
                if page_token:
                    req["next_page_token"] = page_token
                ans = await self._conn.acall(Z.Op.GetWorkflowHistory, req, REQUEST_TIMEOUT_S)
                if not isinstance(ans, dict):
                    break
                page = ans.get("events")
                if isinstance(page, list):
                    more.extend(page)
                page_token = ans.get("next_page_token")
                if not page_token or not page:
                    break
        except TasksError as e:
            log.warning(
                "cannot page the history of %s: %s; signals may be incomplete", ctx.workflow_id, e
            )
        ctx.signals.extend(_signals(more))

    # -- queries -------------------------------------------------------------------

    def _find_query_run(self, body: dict[str, Any]) -> _Run | None:
        token = body.get("task_token")
        if isinstance(token, str) and token in self._runs and self._runs[token].kind == "workflow":
            return self._runs[token]
        run_id, wid = _str(body, "run_id"), _str(body, "workflow_id")
        for r in self._runs.values():
            if (
                r.kind == "workflow"
                and run_id
                and r.ctx.run_id == run_id
                and (not wid or r.ctx.workflow_id == wid)
            ):
                return r
        return None

    async def _answer_query(self, run: _Run | None, body: dict[str, Any]) -> None:
        """Answer a 0xB4 push with 0x00C4 ``{query_token, result}`` or ``{query_token, error}``."""
        assert self._conn is not None
        qtoken = _str(body, "query_token")
        qtype = _str(body, "query_type")
        answer: dict[str, Any] = {"query_token": qtoken}
        try:
            if run is None:
                raise _QueryError("run not held")
            if qtype == "__stack_trace":
                answer["result"] = self._stack_trace(run)
            else:
                fn = run.queries.get(qtype)
                if fn is None:
                    raise _QueryError("unknown query type")
                args = body.get("args")
                call_args = (args,) if wants_arg(fn) else ()
                if is_async(fn):
                    loop = run.handler_loop or self._handler_loop
                    if loop is None or loop is asyncio.get_running_loop():
                        value = await fn(*call_args)
                    else:
                        value = await asyncio.wrap_future(
                            asyncio.run_coroutine_threadsafe(fn(*call_args), loop)
                        )
                else:
                    value = await asyncio.get_running_loop().run_in_executor(
                        None, lambda: fn(*call_args)
                    )
                try:
                    answer["result"] = _json_value(value)
                except (TypeError, ValueError, OverflowError) as e:
                    raise _QueryError(f"query result is not JSON: {e}") from None
        except _QueryError as e:
            answer["error"] = str(e)
        except Exception as e:  # noqa: BLE001 - the query fails, the worker does not
            answer["error"] = str(e) or type(e).__name__
        try:
            await self._conn.acall(Z.Op.RespondQuery, answer, REQUEST_TIMEOUT_S)
        except TasksError as e:
            log.debug("RespondQuery failed: %s", e)

    @staticmethod
    def _stack_trace(run: _Run) -> str:
        if run.async_task is not None and not run.async_task.done():
            buf = io.StringIO()
            run.async_task.print_stack(file=buf)
            return buf.getvalue()
        ident = run.thread_ident
        if ident is not None:
            frame = sys._current_frames().get(ident)
            if frame is not None:
                return "".join(traceback.format_stack(frame))
        return ""

    # -- activities from workflow handlers ------------------------------------------

    async def _execute_activity(
        self,
        run: _Run,
        activity_type: str,
        input: Any,  # noqa: A002
        activity_id: str | None,
        task_queue: str | None,
        start_to_close: Any,
        schedule_to_close: Any,
        heartbeat: Any,
        retry_policy: dict[str, Any] | None,
    ) -> Any:
        """0x006B then wait for the 0xB2 with the same run and activity id."""
        assert self._conn is not None
        if not is_id(activity_type):
            raise InvalidArgument(f"invalid activity type {activity_type!r}")
        run.activity_seq += 1
        aid = activity_id if activity_id is not None else f"{activity_type}-{run.activity_seq}"
        if not is_id(aid):
            raise InvalidArgument(f"invalid activity id {aid!r}")
        body: dict[str, Any] = {
            "task_token": run.token,
            "activity_type": activity_type,
            "activity_id": aid,
        }
        if task_queue is not None:
            if not is_id(task_queue):
                raise InvalidArgument(f"invalid task queue {task_queue!r}")
            body["task_queue"] = task_queue
        try:
            body["input"] = _json_value(input)
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidArgument(f"activity input is not JSON: {e}") from None
        for key, value, what in (
            ("start_to_close_ms", start_to_close, "start_to_close"),
            ("schedule_to_close_ms", schedule_to_close, "schedule_to_close"),
            ("heartbeat_ms", heartbeat, "heartbeat"),
        ):
            ms = _duration_ms(value, what)
            if ms is not None:
                body[key] = ms
        if retry_policy is not None:
            if not isinstance(retry_policy, dict):
                raise InvalidArgument("retry_policy must be a dict")
            body["retry_policy"] = zap_retry_policy(retry_policy)
        key = (run.ctx.run_id, aid)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._activity_waiters[key] = fut  # before sending: the result may overtake the answer
        run.waiters.add(fut)
        try:
            await self._conn.acall(Z.Op.ScheduleActivity, body, REQUEST_TIMEOUT_S)
            result = await fut
        finally:
            run.waiters.discard(fut)
            if self._activity_waiters.get(key) is fut:
                del self._activity_waiters[key]
        failure = result.get("failure")
        if result.get("canceled"):
            raise ActivityError(
                failure
                if isinstance(failure, dict)
                else {"message": "activity canceled", "type": "CanceledError"}
            )
        if result.get("timed_out") or failure is not None:
            raise ActivityError(
                failure
                if isinstance(failure, dict)
                else {"message": "activity timed out", "type": "TimeoutError"}
            )
        return result.get("result")


class _QueryError(Exception):
    """A query answered with an error string (not a worker failure)."""
