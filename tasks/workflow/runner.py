"""The worker's side of durable workflows: a workflow task in, the executor's commands out.

Why here and not in the worker half that runs task-style handlers: a durable
workflow task is not a handler call. The worker finds (or rebuilds) the run's
executor, feeds it the task's events, lets it run one step on the worker's
thread pool (the sandbox watches that thread only), and answers with the
commands (0x00A2), or fails the task (0x00A7) when the code does not match its
history. Executors stay in a sticky cache between tasks, keyed by run id, so a
sticky task carries only the new events; a miss (eviction, restart, a task
that came with the full history) means a full replay from history.
"""

from __future__ import annotations

import asyncio
import functools
import io
import sys
import threading
import traceback
from collections import OrderedDict
from typing import Any

from hanzo_tasks.errors import TooLarge
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.worker_context import Run, json_value, push_int, push_str
from hanzo_tasks.worker_transport import REQUEST_TIMEOUT_S, WorkerTransport, log
from hanzo_tasks.workflow.definitions import WorkflowDefinition
from hanzo_tasks.workflow.errors import WorkflowTaskError
from hanzo_tasks.workflow.executor import StepResult, WorkflowExecutor, WorkflowInfo, failure_of
from hanzo_tasks.workflow.history import Event, events_of

__all__ = ["DurableWorkflowTasks"]

MAX_CACHED_RUNS = 1000
"""Executors kept alive between workflow tasks; the least recently used go first."""
MAX_HISTORY_PAGES = 1000
MIN_HEARTBEAT_S = 1.0
STEP_TIMEOUT_S = 5.0
"""How long one workflow task's replay and step may hold a thread before it is
reported as a deadlock (the workflow code is meant to be quick: it only decides)."""


class DeadlockError(WorkflowTaskError):
    """Workflow code did not give control back (no await reached) in time."""

    code = "deadlock"


class DurableWorkflowTasks(WorkerTransport):
    """Runs workflow tasks of ``@workflow`` types with the deterministic executor."""

    max_cached_runs = MAX_CACHED_RUNS
    workflow_step_timeout = STEP_TIMEOUT_S

    def _sticky_cache(self) -> OrderedDict[str, WorkflowExecutor]:
        cache = self.__dict__.get("_durable_cache")
        if cache is None:
            cache = self.__dict__["_durable_cache"] = OrderedDict()
        return cache  # type: ignore[no-any-return]

    @property
    def durable_stats(self) -> dict[str, int]:
        """``{"sticky": n, "replays": m}``: workflow tasks served from a live executor,
        and those that needed a full replay from history."""
        stats = self.__dict__.get("_durable_stats")
        if stats is None:
            stats = self.__dict__["_durable_stats"] = {"sticky": 0, "replays": 0}
        return stats  # type: ignore[no-any-return]

    def _busy_runs(self) -> set[str]:
        """Runs whose workflow step is running on the pool now."""
        busy = self.__dict__.get("_durable_busy")
        if busy is None:
            busy = self.__dict__["_durable_busy"] = set()
        return busy  # type: ignore[no-any-return]

    def evict(self, run_id: str) -> None:
        """Drop a run's executor: its next workflow task replays the whole history."""
        ex = self._sticky_cache().pop(run_id, None)
        if ex is not None:
            ex.close()

    async def _run_durable(self, run: Run, defn: WorkflowDefinition) -> None:
        body = run.body
        loop = asyncio.get_running_loop()
        run_id = push_str(body, "run_id")
        timeout_ms = push_int(body, "task_timeout_ms", 10_000) or 10_000
        hb = loop.create_task(self._heartbeat_loop(run, max(MIN_HEARTBEAT_S, timeout_ms / 3000)))
        cache = self._sticky_cache()
        try:
            ex = cache.get(run_id)
            full = body.get("full_history") is not False
            if ex is not None and (full or ex.last_event_id != push_int(
                    body, "previous_started_event_id")):
                self.evict(run_id)  # not where the server thinks we are: start over
                ex = None
            events = events_of(body.get("history") or [])
            if ex is None and not full:
                events = await self._page_history(run, 0)  # sticky task, but we lost the run
            elif body.get("history_truncated"):
                events += await self._page_history(run, max((e.id for e in events), default=0))
            if ex is None:
                ex = WorkflowExecutor(defn, self._info(run, defn))
                self.durable_stats["replays"] += 1
            else:
                self.durable_stats["sticky"] += 1
            cache.pop(run_id, None)
            busy = self._busy_runs()
            # The least recently used go, but never one whose step is running now
            # (closing it under its step failed that task): the cache may overflow
            # by the number of steps in flight.
            for old_id in [r for r in cache if r not in busy][: max(0, len(cache) + 1 - self.max_cached_runs)]:
                cache.pop(old_id).close()
            cache[run_id] = ex
            busy.add(run_id)
            step = loop.run_in_executor(self._pool, _step, ex, events)
            step.add_done_callback(functools.partial(_not_busy, busy, run_id))
            try:
                result = await asyncio.wait_for(asyncio.shield(step), self.workflow_step_timeout)
            except TimeoutError:
                step.add_done_callback(lambda f: f.cancelled() or f.exception())  # unawaited
                # Workflow code that never yields (a busy loop, a blocking call the sandbox
                # does not know) holds a pool thread; it cannot be stopped, but the run must
                # not hang silently behind heartbeats: fail the task with where it is stuck.
                err = DeadlockError(
                    f"workflow step did not yield within {self.workflow_step_timeout:g} s; "
                    f"it is stuck at:\n{_thread_stack(ex)}")
                log.error("workflow task of %s: %s", push_str(body, "workflow_id"), err)
                await self._fail_task(run, run_id, err)
                return
            except WorkflowTaskError as e:
                log.error("workflow task of %s failed: %s", push_str(body, "workflow_id"), e)
                await self._fail_task(run, run_id, e)
                return
            except Exception as e:  # noqa: BLE001 - a bug must not leave the task hanging
                log.exception("workflow task of %s failed", push_str(body, "workflow_id"))
                await self._fail_task(run, run_id, e)
                return
            if run.stale or run.abandoned:
                self.evict(run_id)
                return
            run.finished = True
            self._release(run)  # the server may push the next task before our answer lands
            sent = await self._send_commands(run, result)
            if not sent or result.closed:
                self.evict(run_id)
        finally:
            run.finished = True
            hb.cancel()

    def _info(self, run: Run, defn: WorkflowDefinition) -> WorkflowInfo:
        b = run.body
        return WorkflowInfo(
            workflow_id=push_str(b, "workflow_id"),
            run_id=push_str(b, "run_id"),
            workflow_type=defn.name,
            namespace=push_str(b, "namespace", self.namespace),
            task_queue=push_str(b, "task_queue", self.task_queue),
            attempt=push_int(b, "workflow_attempt", 1),
        )

    async def _send_commands(self, run: Run, result: StepResult) -> bool:
        body = {"task_token": run.token, "commands": result.commands, "identity": self.identity}
        try:
            return await self._respond(Z.Op.RespondWorkflowTaskCompleted, body, run)
        except TooLarge as e:
            await self._fail_task(run, run.ctx.run_id, e)
            return False

    async def _fail_task(self, run: Run, run_id: str, exc: BaseException) -> None:
        """0x00A7: the server records WORKFLOW_TASK_FAILED and retries the task later."""
        self.evict(run_id)
        if run.stale or run.abandoned:
            return
        run.finished = True
        self._release(run)
        body = {"task_token": run.token, "cause": "worker_failed", "failure": failure_of(exc),
                "identity": self.identity}
        await self._respond(Z.Op.RespondWorkflowTaskFailed, body, run)

    async def _page_history(self, run: Run, after: int) -> list[Event]:
        return await self._page_events(run.body, after)

    async def _page_events(self, body: dict[str, Any], after: int) -> list[Event]:
        """The run's events after ``after`` (0x0066, page by page)."""
        assert self._conn is not None
        out: list[Any] = []
        token: Any = None
        for _ in range(MAX_HISTORY_PAGES):
            req: dict[str, Any] = {"workflow_id": push_str(body, "workflow_id"),
                                   "run_id": push_str(body, "run_id"), "after_event_id": after}
            if token:
                req["next_page_token"] = token
            ans = await self._conn.acall(Z.Op.GetWorkflowHistory, req, REQUEST_TIMEOUT_S)
            page = ans.get("events") if isinstance(ans, dict) else None
            if isinstance(page, list):
                out.extend(page)
            token = ans.get("next_page_token") if isinstance(ans, dict) else None
            if not token or not page:
                break
        return events_of(out)

    # -- queries ----------------------------------------------------------------------------

    def holds_durable_run(self, body: dict[str, Any]) -> bool:
        return push_str(body, "run_id") in self._sticky_cache()

    def is_durable_type(self, workflow_type: str) -> bool:
        return isinstance(self._workflows.get(workflow_type), WorkflowDefinition)

    async def answer_durable_query(self, body: dict[str, Any]) -> dict[str, Any]:
        """``{"result": ...}`` or ``{"error": ...}`` from the run's executor.

        A run this worker does not hold is replayed from its history first (its
        state after the last completed workflow task), then asked.
        """
        run_id = push_str(body, "run_id")
        qtype = push_str(body, "query_type")
        ex = self._sticky_cache().get(run_id)
        loop = asyncio.get_running_loop()
        fresh = False
        try:
            if ex is None:
                defn = self._workflows.get(push_str(body, "workflow_type"))
                if not isinstance(defn, WorkflowDefinition):
                    return {"error": "run not held"}
                events = await self._page_events(body, 0)
                info = WorkflowInfo(push_str(body, "workflow_id"), run_id, defn.name,
                                    self.namespace, self.task_queue)
                ex = WorkflowExecutor(defn, info)
                fresh = True
                await loop.run_in_executor(self._pool, _replay_only, ex, events)
            if qtype == "__stack_trace":
                return {"result": _stack_of(ex)}
            args = body.get("args")
            try:
                value = await loop.run_in_executor(self._pool, ex.query, qtype, args)
            except KeyError:
                return {"error": "unknown query type"}
            return {"result": json_value(value)}
        except (TypeError, ValueError, OverflowError) as e:
            return {"error": f"query result is not JSON: {e}"}
        except Exception as e:  # noqa: BLE001 - the query fails, the worker does not
            return {"error": str(e) or type(e).__name__}
        finally:
            if fresh and ex is not None:
                ex.close()


def _not_busy(busy: set[str], run_id: str, _done: Any) -> None:
    busy.discard(run_id)


def _step(ex: WorkflowExecutor, events: list[Event]) -> StepResult:
    ex.thread_ident = threading.get_ident()
    with ex.lock:
        if ex.loop.is_closed():
            raise WorkflowTaskError("the run's executor was evicted; the task is retried")
        try:
            result = ex.activate(events)
        finally:
            ex.close_if_doomed()
    if result is None:
        raise WorkflowTaskError("the workflow task's history holds no started workflow task")
    return result


def _replay_only(ex: WorkflowExecutor, events: list[Event]) -> None:
    with ex.lock:
        try:
            ex.activate(events)
        finally:
            ex.close_if_doomed()


def _thread_stack(ex: WorkflowExecutor) -> str:
    frame = sys._current_frames().get(ex.thread_ident or -1)
    if frame is None:
        return "(unknown)"
    return "".join(traceback.format_stack(frame)[-8:])


def _stack_of(ex: WorkflowExecutor) -> str:
    main = ex._main
    if main is None or main.done():
        return ""
    buf = io.StringIO()
    main.print_stack(file=buf)
    return buf.getvalue()
