"""The worker's traffic on the client's ZAP connection, and the lease of a handler.

Why a module of its own: subscriptions (and subscribing again after a
reconnect), heartbeats, and reporting outcomes through outages are the same
for workflow and activity tasks; so is running a handler under its lease
(heartbeats while it runs, the outcome when it ends). Both halves of the
worker (``worker_workflows``, ``worker_activities``) build on this class, and
the facade (``worker.Worker``) on both. It holds the worker's state, all of it
touched on the ZAP loop only, except where a lock says otherwise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures.thread
import inspect
import logging
import random
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from hanzo_tasks._local import is_async, wants_arg
from hanzo_tasks.errors import (
    Canceled,
    NonRetryableError,
    NotFound,
    RateLimited,
    TasksError,
    Timeout,
    TooLarge,
    Unavailable,
)
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.worker_context import (
    Outcome,
    Run,
    current_context,
    json_value,
    pool_thread,
    push_str,
)
from hanzo_tasks.zap import ZapConnection

log = logging.getLogger("hanzo_tasks.worker")

REQUEST_TIMEOUT_S = 10.0
START_TIMEOUT_S = 30.0
RESPOND_RETRY_S = 120.0
"""How long a finished handler keeps trying to report through a connection
outage; past that its lease has expired anyway and the task was redelivered."""


@runtime_checkable
class WorkerClient(Protocol):
    """What a worker needs of its ``tasks.Client`` (named here, so that this
    package's worker does not import the client that embeds a worker)."""

    @property
    def mode(self) -> str: ...

    @property
    def namespace(self) -> str: ...

    @property
    def handler(self) -> Callable[[str, Any], Any] | None: ...

    def _worker_connection(self) -> ZapConnection: ...


def failure_of(
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
            failure["details"] = json_value(exc.details)
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


class WorkerTransport:
    """The worker's state, its subscriptions and its requests (SPEC §3, §8.4)."""

    def __init__(
        self,
        client: WorkerClient,
        task_queue: str,
        max_concurrent: int,
        max_concurrent_activities: int | None,
        identity: str,
        namespace: str,
    ) -> None:
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
        self._runs: dict[str, Run] = {}
        # Signals seen per run, for sticky deliveries that carry only the new
        # events (SPEC §5.6 ``full_history: false``); oldest runs forgotten first.
        self._seen_signals: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self._busy = {"workflow": 0, "activity": 0}
        self._activity_waiters: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self._done_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._stop_task: asyncio.Task[None] | None = None

    # -- subscriptions ------------------------------------------------------------

    def _connection(self) -> ZapConnection:
        if self._conn is None:
            self._conn = self.client._worker_connection()
        return self._conn

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

    # -- running a handler under its lease --------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        assert self._conn is not None
        return self._conn.spawn(coro)

    def _release(self, run: Run) -> None:
        if self._runs.get(run.token) is run:
            del self._runs[run.token]
            self._busy[run.kind] -= 1

    def _call_for(self, run: Run) -> tuple[Callable[..., Any], tuple[Any, ...]]:
        b = run.body
        inp = b.get("input")
        if run.kind == "workflow":
            wtype = push_str(b, "workflow_type")
            fn = self._workflows.get(wtype)
            if fn is None:
                handler = self.client.handler
                assert handler is not None
                return handler, (wtype, inp)
        else:
            fn = self._activities[push_str(b, "activity_type")]
        return fn, ((inp,) if wants_arg(fn) else ())

    async def _execute(
        self, run: Run, fn: Callable[..., Any], args: tuple[Any, ...], heartbeat_s: float | None
    ) -> Outcome | None:
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
                    return Outcome("canceled")
                return Outcome("error", exc=asyncio.CancelledError("the handler was cancelled"))
            except Canceled:
                return None if run.stale else Outcome("canceled")
            except Exception as e:  # noqa: BLE001 - any handler failure is an outcome
                return None if run.stale else Outcome("error", exc=e)
            except BaseException as e:  # noqa: BLE001 - SystemExit & co raised by a sync handler
                return None if run.stale else Outcome("error", exc=e)
            if run.stale or run.abandoned:
                return None
            return Outcome("ok", value=value)
        finally:
            run.finished = True
            if hb is not None:
                hb.cancel()

    def _start_async(self, run: Run, make: Callable[[], Any]) -> asyncio.Future[Any]:
        """The handler's coroutine as a future on the ZAP loop, run on the handler loop."""
        run.is_async = True
        coro = self._async_entry(run, make)
        loop = self._handler_loop
        if loop is None or loop is asyncio.get_running_loop():
            return asyncio.ensure_future(coro)
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    @staticmethod
    async def _async_entry(run: Run, make: Callable[[], Any]) -> Any:
        current_context.set(run.ctx)  # this task's own context copy
        run.async_task = asyncio.current_task()
        run.handler_loop = asyncio.get_running_loop()
        return await make()

    def _sync_entry(self, run: Run, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        token = current_context.set(run.ctx)
        pool_thread.worker = self
        run.thread_ident = threading.get_ident()
        try:
            return fn(*args)
        finally:
            run.thread_ident = None
            pool_thread.worker = None
            current_context.reset(token)

    # -- heartbeats and outcomes ------------------------------------------------------

    async def _heartbeat_loop(self, run: Run, interval: float) -> None:
        while not (run.stale or run.finished):
            await asyncio.sleep(interval)
            if run.stale or run.finished:
                return
            await self._heartbeat_once(
                run, run.heartbeat_details if run.kind == "activity" else None
            )

    async def _heartbeat_once(self, run: Run, details: Any) -> None:
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

    def _heartbeat_now(self, run: Run, details: Any) -> None:
        """``ctx.heartbeat()``: blocks a sync handler briefly so that its cancel flag
        is fresh; a coroutine's is sent in the background (blocking would stall the
        loop that must carry it)."""
        conn = self._conn
        if conn is None:
            return
        coro = self._heartbeat_once(run, details)
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

    async def _respond(self, opcode: int, body: dict[str, Any], run: Run) -> bool:
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
