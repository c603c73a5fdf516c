"""The workflow half of the worker: workflow tasks, their queries and activities.

Why a module of its own: a workflow task carries the most protocol (signals
from a possibly partial history, the completion command, queries answered
while it runs, activities scheduled from inside the handler); apart from the
facade and the activity half it can be read as one story.
"""

from __future__ import annotations

import asyncio
import io
import sys
import traceback
from typing import Any

from hanzo_tasks._local import is_async, wants_arg
from hanzo_tasks.args import duration_ms, zap_retry_policy
from hanzo_tasks.errors import ActivityError, InvalidArgument, TasksError, TooLarge
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.names import is_id
from hanzo_tasks.worker_context import (
    Outcome,
    Run,
    TaskContext,
    json_value,
    push_int,
    push_str,
    signals_of,
)
from hanzo_tasks.worker_transport import REQUEST_TIMEOUT_S, failure_of, log
from hanzo_tasks.workflow.definitions import WorkflowDefinition
from hanzo_tasks.workflow.runner import DurableWorkflowTasks

MIN_WORKFLOW_HEARTBEAT_S = 1.0
"""Workflow-task heartbeats: every max(this, task_timeout/3) (SPEC §3)."""
DEFAULT_TASK_TIMEOUT_MS = 10_000
"""The server's default workflowTaskTimeout (§5.3), used when a push omits it."""
MAX_HISTORY_PAGES = 1000
MAX_STICKY_RUNS = 10_000


class WorkflowTasks(DurableWorkflowTasks):
    """Runs pushed workflow tasks (0xB0), answers queries (0xB4), schedules activities.

    Types registered as ``@workflow`` definitions run with the deterministic
    executor (``DurableWorkflowTasks``); plain functions are task-style handlers.
    """

    async def _run_workflow(self, run: Run) -> None:
        defn = self._workflows.get(push_str(run.body, "workflow_type"))
        if isinstance(defn, WorkflowDefinition):
            try:
                await self._run_durable(run, defn)
            finally:
                self._release(run)
            return
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
                push_int(run.body, "task_timeout_ms", DEFAULT_TASK_TIMEOUT_MS)
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

    def _workflow_command(self, outcome: Outcome) -> dict[str, Any]:
        if outcome.kind == "canceled":
            return {"type": "CancelWorkflowExecution"}
        if outcome.kind == "error":
            assert outcome.exc is not None
            return {"type": "FailWorkflowExecution", "failure": failure_of(outcome.exc)}
        try:
            result = json_value(outcome.value)
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            return {
                "type": "FailWorkflowExecution",
                "failure": failure_of(e, type_name="SerializationError", non_retryable=True)
                | {"message": f"result is not JSON-serializable: {e}"},
            }
        return {"type": "CompleteWorkflowExecution", "result": result}

    async def _respond_workflow(self, run: Run, command: dict[str, Any]) -> bool:
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

    async def _page_signals(self, run: Run, after: int | None = None) -> None:
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
        ctx.signals.extend(signals_of(more))

    # -- queries ---------------------------------------------------------------------

    def _find_query_run(self, body: dict[str, Any]) -> Run | None:
        token = body.get("task_token")
        if isinstance(token, str) and token in self._runs and self._runs[token].kind == "workflow":
            return self._runs[token]
        run_id, wid = push_str(body, "run_id"), push_str(body, "workflow_id")
        for r in self._runs.values():
            if (
                r.kind == "workflow"
                and run_id
                and r.ctx.run_id == run_id
                and (not wid or r.ctx.workflow_id == wid)
            ):
                return r
        return None

    async def _answer_query(self, run: Run | None, body: dict[str, Any]) -> None:
        """Answer a 0xB4 push with 0x00C4 ``{query_token, result}`` or ``{query_token, error}``."""
        assert self._conn is not None
        qtoken = push_str(body, "query_token")
        qtype = push_str(body, "query_type")
        answer: dict[str, Any] = {"query_token": qtoken}
        if self.holds_durable_run(body) or (
            run is None and self.is_durable_type(push_str(body, "workflow_type"))
        ):
            answer.update(await self.answer_durable_query(body))
            try:
                await self._conn.acall(Z.Op.RespondQuery, answer, REQUEST_TIMEOUT_S)
            except TasksError as e:
                log.debug("RespondQuery failed: %s", e)
            return
        try:
            if run is None:
                raise _QueryError("run not held")
            if qtype == "__stack_trace":
                answer["result"] = self._handler_stack(run)
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
                    answer["result"] = json_value(value)
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
    def _handler_stack(run: Run) -> str:
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

    # -- activities from workflow handlers ----------------------------------------------

    async def _execute_activity(
        self,
        run: Run,
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
            body["input"] = json_value(input)
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidArgument(f"activity input is not JSON: {e}") from None
        for key, value, what in (
            ("start_to_close_ms", start_to_close, "start_to_close"),
            ("schedule_to_close_ms", schedule_to_close, "schedule_to_close"),
            ("heartbeat_ms", heartbeat, "heartbeat"),
        ):
            ms = duration_ms(value, what)
            if ms is not None:
                body[key] = ms
        if retry_policy is not None:
            if not isinstance(retry_policy, dict):
                raise InvalidArgument("retry_policy must be a dict")
            body["retry_policy"] = zap_retry_policy(retry_policy)
        waiter_key = (run.ctx.run_id, aid)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._activity_waiters[waiter_key] = fut  # before sending: the result may overtake the answer
        run.waiters.add(fut)
        try:
            await self._conn.acall(Z.Op.ScheduleActivity, body, REQUEST_TIMEOUT_S)
            result = await fut
        finally:
            run.waiters.discard(fut)
            if self._activity_waiters.get(waiter_key) is fut:
                del self._activity_waiters[waiter_key]
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
