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
* a workflow task of a ``@workflow`` type (``workflows=[...]``) -> 0x00A2 with
  the commands its deterministic executor issued in this step (durable code,
  ``hanzo_tasks.workflow``; see ``workflow/runner.py``);
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

The pieces: ``worker_transport`` (state, subscriptions, heartbeats, outcomes,
a handler under its lease), ``worker_workflows`` and ``worker_activities`` (the
two halves), ``worker_context`` (the handler's view). This module is the
public face: construction, registration, start/run/stop and the pushes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable
from typing import Any

from hanzo_tasks.errors import FailedPrecondition, InvalidArgument, Timeout
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.names import is_id, is_namespace
from hanzo_tasks.worker_activities import ActivityTasks
from hanzo_tasks.worker_context import (
    ActivityContext,
    Run,
    TaskContext,
    context,
    current_context,
    pool_thread,
    push_str,
)
from hanzo_tasks.worker_transport import START_TIMEOUT_S, WorkerClient, log
from hanzo_tasks.worker_workflows import WorkflowTasks
from hanzo_tasks.workflow.definitions import (
    WorkflowDefinition,
    activity_definition,
    workflow_definition_of,
)
from hanzo_tasks.zap import ZapConnection, default_identity

__all__ = ["ActivityContext", "TaskContext", "Worker", "context"]


class Worker(WorkflowTasks, ActivityTasks):
    """Runs registered handlers for tasks the server pushes over ZAP (SPEC §3).

    ``start()`` runs it in the background (on the client's ZAP thread) and
    returns once subscribed; ``await run()`` runs it until ``stop()``, with
    coroutine handlers on the caller's loop. A worker is used once: after
    ``stop()`` build a new one.
    """

    def __init__(
        self,
        client: WorkerClient,
        task_queue: str = "tasks",
        *,
        max_concurrent: int = 10,
        max_concurrent_activities: int | None = None,
        identity: str | None = None,
        namespace: str | None = None,
        workflows: Iterable[Any] = (),
        activities: Iterable[Any] = (),
    ) -> None:
        """``workflows``: ``@workflow`` functions or classes, run as durable code;
        ``activities``: ``@activity`` functions (both by their definitions' names)."""
        if not isinstance(client, WorkerClient):
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

        super().__init__(
            client, task_queue, max_concurrent, max_concurrent_activities, identity, namespace
        )
        for wf in workflows:
            defn = workflow_definition_of(wf)
            self._register(self._workflows, defn.name, defn, "workflow type")
        for act in activities:
            adefn = activity_definition(act)
            self._register(self._activities, adefn.name, adefn.fn, "activity type")

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

        A ``@workflow`` (function or class) is run as durable code under ``name``.
        After ``start`` this re-subscribes with the new type list.
        """
        defn = getattr(fn, "__tasks_workflow__", None)
        if isinstance(defn, WorkflowDefinition):
            named = WorkflowDefinition(name, defn.fn, defn.cls, defn.signals, defn.queries)
            self._register(self._workflows, name, named, "workflow type")
            return
        self._register(self._workflows, name, fn, "workflow type")

    def register_activity(self, name: str, fn: Callable[..., Any]) -> None:
        """Run ``fn`` for activity type ``name``: ``fn()`` or ``fn(input)``."""
        self._register(self._activities, name, fn, "activity type")

    def _register(
        self,
        table: dict[str, Any],
        name: str,
        fn: Callable[..., Any] | WorkflowDefinition,
        what: str,
    ) -> None:
        if not is_id(name):
            raise InvalidArgument(f"invalid {what} {name!r}")
        if not callable(fn) and not isinstance(fn, WorkflowDefinition):
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
        ctx = current_context.get()
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

    def _prepare_stop(self) -> ZapConnection | None:
        with self._lock:
            if self._state == "new":
                self._state = "stopped"
                return None
            if self._state == "stopped":
                return None
        return self._conn

    def _must_not_wait(self, conn: ZapConnection) -> bool:
        if conn.in_loop_thread() or getattr(pool_thread, "worker", None) is self:
            return True
        ctx = current_context.get()
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
        for run_id in list(self._sticky_cache()):
            self.evict(run_id)
        for pool in (self._pool, self._activity_pool):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            self._state = "stopped"
            waiters, self._done_waiters = self._done_waiters, []
        for loop, fut in waiters:
            loop.call_soon_threadsafe(_resolve, fut)

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
            key = (push_str(body, "run_id"), push_str(body, "activity_id"))
            return 2 if key in self._activity_waiters else 0
        if opcode == Z.Op.DeliverCancelRequest:
            return 2 if push_str(body, "task_token") in self._runs else 0
        if opcode == Z.Op.DeliverQuery:
            if self._find_query_run(body) is not None or self.holds_durable_run(body):
                return 2
            return 1 if self._handles_workflow(push_str(body, "workflow_type")) else 0
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
        return 1 if same_queue and same_ns and handles(push_str(body, type_key)) else 0

    def _handles_workflow(self, workflow_type: str) -> bool:
        return workflow_type in self._workflows or self.client.handler is not None

    def on_push(self, opcode: int, body: dict[str, Any]) -> dict[str, Any]:
        if opcode == Z.Op.DeliverWorkflowTask:
            return self._accept(body, "workflow")
        if opcode == Z.Op.DeliverActivityTask:
            return self._accept(body, "activity")
        if opcode == Z.Op.DeliverActivityResult:
            fut = self._activity_waiters.get(
                (push_str(body, "run_id"), push_str(body, "activity_id"))
            )
            if fut is not None and not fut.done():
                fut.set_result(body)
            return Z.push_ack_body(200)
        if opcode == Z.Op.DeliverCancelRequest:
            run = self._runs.get(push_str(body, "task_token"))
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
        ttype = push_str(body, type_key)
        fn = self._workflows.get(ttype) if kind == "workflow" else self._activities.get(ttype)
        if fn is None and not (kind == "workflow" and self.client.handler is not None):
            return Z.push_ack_body(
                400,
                {"code": "invalid_argument", "message": f"no handler for {kind} type {ttype!r}"},
            )
        run = Run(self, kind, body)
        run.ctx = TaskContext(run) if kind == "workflow" else ActivityContext(run)
        self._runs[token] = run
        self._busy[kind] += 1
        coro = self._run_workflow(run) if kind == "workflow" else self._run_activity(run)
        run.task = self._spawn(coro)
        return Z.push_ack_body(200)


def _resolve(fut: asyncio.Future[None]) -> None:
    """Wake one ``wait_stopped`` caller on its own loop (once)."""
    if not fut.done():
        fut.set_result(None)
