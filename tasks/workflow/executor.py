"""The deterministic executor: drives a workflow coroutine from its run's history.

How a history is read (ARCHITECTURE "Workflow code"): events are taken in
order. Each WORKFLOW_TASK_STARTED that history shows COMPLETED is a *replayed
step*: the events that arrived before it (activity results, fired timers,
signals, a cancel request) are applied to the awaitables they resolve, the
workflow loop runs until the code is blocked again, and the commands the code
issued must then match, one by one and in order, the command events that
follow that WORKFLOW_TASK_COMPLETED (matched by kind and id). A step whose task
failed or timed out is skipped (its events carry over to the next one). The
last WORKFLOW_TASK_STARTED without an outcome is the *live step*: its commands
are the answer to the workflow task. Anything that does not match is a
:class:`NonDeterminismError` naming the event and the line of code.

An executor lives on between workflow tasks (the worker's sticky cache), fed
only the new events; a fresh one is fed the whole history (full replay).
Time is the WORKFLOW_TASK_STARTED event's time; randomness is seeded from the
run id. Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import inspect
import os
import random
import sys
import threading
import traceback
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hanzo_tasks.errors import ActivityError, NonRetryableError, TasksError
from hanzo_tasks.worker_context import json_value
from hanzo_tasks.workflow.definitions import WorkflowDefinition
from hanzo_tasks.workflow.errors import (
    ChildWorkflowError,
    ContinueAsNew,
    ExternalWorkflowError,
    NonDeterminismError,
    WorkflowSandboxError,
    WorkflowTaskError,
)
from hanzo_tasks.workflow.history import Event, history_of_attempt
from hanzo_tasks.workflow.loop import WorkflowLoop
from hanzo_tasks.workflow.sandbox import Sandbox

__all__ = ["WorkflowExecutor", "WorkflowInfo", "current_executor"]

_local = threading.local()
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(asyncio.__file__))

TERMINAL_EVENTS = {
    "CompleteWorkflowExecution": ("WORKFLOW_EXECUTION_COMPLETED",),
    "FailWorkflowExecution": ("WORKFLOW_EXECUTION_FAILED", "WORKFLOW_EXECUTION_ATTEMPT_FAILED"),
    "CancelWorkflowExecution": ("WORKFLOW_EXECUTION_CANCELED",),
    "ContinueAsNew": ("WORKFLOW_EXECUTION_CONTINUED_AS_NEW",),
}
COMMAND_EVENTS = {
    "ACTIVITY_TASK_SCHEDULED": "ScheduleActivityTask",
    "ACTIVITY_TASK_CANCEL_REQUESTED": "RequestCancelActivityTask",
    "TIMER_STARTED": "StartTimer",
    "TIMER_CANCELED": "CancelTimer",
    "MARKER_RECORDED": "RecordMarker",
    "UPSERT_WORKFLOW_SEARCH_ATTRIBUTES": "UpsertSearchAttributes",
    "START_CHILD_WORKFLOW_EXECUTION_INITIATED": "StartChildWorkflowExecution",
    "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED": "SignalExternalWorkflowExecution",
    "REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED": "RequestCancelExternalWorkflowExecution",
}
"""History events that only a command writes: each must match the next expected command."""
MAYBE_COMMAND_EVENTS = {e: c for c, es in TERMINAL_EVENTS.items() for e in es}
"""Close events a command writes, but the server may also write on its own (sweeps, timeouts)."""
TASK_EVENTS = {"WORKFLOW_TASK_COMPLETED", "WORKFLOW_TASK_FAILED", "WORKFLOW_TASK_TIMED_OUT"}

MARKER_SIDE_EFFECT = "SideEffect"
MARKER_PATCH = "Patch"


def current_executor() -> WorkflowExecutor:
    """The executor whose step runs on this thread; outside workflow code, an error."""
    ex = getattr(_local, "executor", None)
    if ex is None:
        raise WorkflowTaskError(
            "this function is only available inside a @workflow's code (while a worker runs it)"
        )
    return ex


def in_workflow() -> bool:
    return getattr(_local, "executor", None) is not None


@dataclass(frozen=True)
class WorkflowInfo:
    """Who the run is (what ``workflow.info()`` returns)."""

    workflow_id: str
    run_id: str
    workflow_type: str
    namespace: str = "default"
    task_queue: str = "default"
    attempt: int = 1


@dataclass
class Command:
    """A command the code issued, with where it issued it (for the error message)."""

    body: dict[str, Any]
    source: str
    ref: Any = None  # what the command's outcome events resolve (external signal / cancel)

    @property
    def type(self) -> str:
        return str(self.body["type"])

    def summary(self) -> str:
        b = self.body
        keys = ("activity_type", "activity_id", "timer_id", "marker_name", "workflow_type",
                "workflow_id", "scheduled_event_id", "signal_name")
        parts = [f"{k}={b[k]!r}" for k in keys if k in b]
        return f"{self.type}({', '.join(parts)})"


@dataclass
class _Activity:
    future: asyncio.Future[Any]
    command: Command
    scheduled_event_id: int | None = None


@dataclass
class _Child:
    future: asyncio.Future[Any]
    command: Command
    started: asyncio.Future[str]
    initiated_event_id: int | None = None
    run_id: str | None = None


@dataclass
class _External:
    future: asyncio.Future[None]
    what: str  # "signal" | "cancel"


@dataclass
class StepResult:
    """What a live step answers the workflow task with."""

    commands: list[dict[str, Any]]
    closed: bool = False  # the last command closes the run


def failure_of(exc: BaseException) -> dict[str, Any]:
    """SPEC §3 failure mapping (message, class name, non_retryable, stack trace)."""
    failure: dict[str, Any] = {
        "message": str(exc) or type(exc).__name__,
        "type": type(exc).__name__,
        "non_retryable": isinstance(exc, NonRetryableError),
        "stack_trace": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }
    if isinstance(exc, TasksError) and exc.details:
        try:
            failure["details"] = json_value(exc.details)
        except (TypeError, ValueError, OverflowError):
            pass
    return failure


def _code_line() -> str:
    """Where the workflow code issued the command: the first frame outside this package."""
    f = sys._getframe(2)
    while f is not None:
        fn = os.path.abspath(f.f_code.co_filename)
        if not fn.startswith(_PACKAGE_DIR) and not fn.startswith(_ASYNCIO_DIR):
            return f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}"
        f = f.f_back  # type: ignore[assignment]
    return "<unknown>"


class WorkflowExecutor:
    """One run of one workflow, replayed from history and advanced step by step."""

    def __init__(self, defn: WorkflowDefinition, info: WorkflowInfo) -> None:
        self.defn = defn
        self.info = info
        self.loop = WorkflowLoop(self)  # type: ignore[abstract]  # I/O methods: not needed
        self.now_ms = 0
        self.replaying = True
        self.last_event_id = 0
        self.closed = False  # a terminal command was issued
        self.cancel_requested = False
        self.lock = threading.Lock()  # one step or query at a time (queries come from elsewhere)
        seed = int.from_bytes(hashlib.sha256(info.run_id.encode()).digest()[:8], "big")
        self.rng = random.Random(seed)
        self._input: Any = None
        self._started = False
        self._instance: Any = None
        self._main: asyncio.Task[None] | None = None
        self._step_commands: list[Command] = []
        self._expected: deque[Command] = deque()
        self._pending: list[Event] = []
        self._seq = {"activity": 0, "timer": 0, "child": 0, "side_effect": 0}
        self._activities: dict[str, _Activity] = {}
        self._activities_by_event: dict[int, str] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._timer_ids: dict[int, str] = {}  # id(handle) -> timer id
        self._children: dict[str, _Child] = {}
        self._children_by_event: dict[int, str] = {}
        self._externals_by_event: dict[int, _External] = {}
        self._signal_handlers: dict[str, Callable[..., Any]] = {}
        self._buffered_signals: dict[str, list[Any]] = {}
        self.query_handlers: dict[str, Callable[..., Any]] = {}
        self._conditions: list[tuple[Callable[[], Any], asyncio.Future[None]]] = []
        self._side_effects: dict[int, Any] = {}
        self._patches_in_step: set[str] = set()
        self._patches: dict[str, bool] = {}
        self._violation: WorkflowTaskError | None = None
        self._doomed = False
        self.thread_ident: int | None = None  # the thread of the latest step (diagnostics)
        self._sandbox = Sandbox(self._on_violation)
        self._context = contextvars.Context()

    # -- feeding history ------------------------------------------------------------

    def activate(self, raw_events: list[Event]) -> StepResult | None:
        """Apply these events (those already seen are skipped); run the steps they hold.

        Returns the live step's commands, or None when the events hold no live
        step (a closed history, as the Replayer feeds). Raises a
        :class:`WorkflowTaskError` when the code does not match its history or broke
        the sandbox; the executor is then unusable.
        """
        events = [e for e in raw_events if e.id > self.last_event_id]
        if self.last_event_id == 0:
            events = history_of_attempt(events)
        for e in events:
            if e.type == "MARKER_RECORDED" and e.attr("markerName") == MARKER_SIDE_EFFECT:
                d = e.attr("details")
                if isinstance(d, dict) and isinstance(d.get("id"), int):
                    self._side_effects[d["id"]] = d.get("value")
        outcomes: dict[int, str] = {}
        for i, e in enumerate(events):
            if e.type in TASK_EVENTS:
                sid = e.attr("startedEventId", "started_event_id")
                if isinstance(sid, int):
                    outcomes[sid] = e.type
                    after = events[i + 1].type if i + 1 < len(events) else ""
                    if after == "WORKFLOW_EXECUTION_RESET":  # reset right after the completion:
                        outcomes[sid] = "RESET"  # its commands were not copied, so it never was
        last_started = max((e.id for e in events if e.type == "WORKFLOW_TASK_STARTED"), default=0)
        for i, e in enumerate(events):
            if e.type == "WORKFLOW_EXECUTION_STARTED":
                self._input = e.attr("input")
            elif e.type == "WORKFLOW_TASK_STARTED":
                outcome = outcomes.get(e.id)
                if outcome == "WORKFLOW_TASK_COMPLETED":
                    self._step(e, replaying=True, following=events[i + 1:])
                elif outcome is None and e.id == last_started:
                    commands = self._step(e, replaying=False, following=[])
                    self.last_event_id = e.id
                    return commands
                # A task that failed or timed out, or one a reset cut short: its code's
                # effects never happened.
            elif e.type in COMMAND_EVENTS:
                self._match(e)
            elif e.type in MAYBE_COMMAND_EVENTS and self._expected:
                self._match(e)
            elif e.type in TASK_EVENTS or e.type in ("WORKFLOW_TASK_SCHEDULED",):
                pass
            else:
                self._pending.append(e)
            self.last_event_id = e.id
        return None

    def finish_replay(self) -> None:
        """The history ended (a closed run): every command must have had its event."""
        if self._expected:
            self._not_in_history(self._expected[0], None)

    # -- one step ---------------------------------------------------------------------

    def _step(self, started: Event, *, replaying: bool, following: list[Event]) -> StepResult:
        if self._expected:
            self._not_in_history(self._expected[0], started)
        self.now_ms = started.time_ms
        self.replaying = replaying
        self._patches_in_step = set()
        if replaying:
            for e in following:
                if e.type in ("WORKFLOW_TASK_STARTED", "WORKFLOW_TASK_SCHEDULED"):
                    break
                if e.type == "MARKER_RECORDED" and e.attr("markerName") == MARKER_PATCH:
                    d = e.attr("details")
                    if isinstance(d, dict) and isinstance(d.get("id"), str):
                        self._patches_in_step.add(d["id"])
        pending, self._pending = self._pending, []
        with self._entered():
            if not self._started:
                self._start_main()
            for e in pending:
                self._apply(e)
            self._run_until_blocked()
        if self._violation is not None:
            raise self._violation
        commands, self._step_commands = self._step_commands, []
        # Replayed or live, the commands' events follow in history (for a live step, in
        # the next task's events): they are matched then.
        self._expected.extend(commands)
        closed = bool(commands) and commands[-1].type in TERMINAL_EVENTS
        return StepResult([c.body for c in commands], closed)

    class _Entered:
        def __init__(self, ex: WorkflowExecutor) -> None:
            self.ex = ex
            self.previous: Any = None

        def __enter__(self) -> None:
            self.previous = getattr(_local, "executor", None)
            _local.executor = self.ex
            self.ex._sandbox.__enter__()

        def __exit__(self, *exc: object) -> None:
            self.ex._sandbox.__exit__()
            _local.executor = self.previous

    def _entered(self) -> WorkflowExecutor._Entered:
        return WorkflowExecutor._Entered(self)

    def _run_until_blocked(self) -> None:
        while True:
            self.loop.run_ready(self._sandbox.arm)
            woke = False
            for fn, fut in list(self._conditions):
                if fut.done():
                    continue
                try:
                    ok = fn()
                except BaseException as e:  # noqa: BLE001 - the waiter gets the error
                    fut.set_exception(e)
                    woke = True
                    continue
                if ok:
                    fut.set_result(None)
                    woke = True
            if not woke and not self.loop.has_ready:
                return

    def _start_main(self) -> None:
        self._started = True
        instance, run = self.defn.instantiate()
        self._instance = instance
        if instance is not None:
            for sig, attr in self.defn.signals.items():
                self._signal_handlers[sig] = getattr(instance, attr)
            for q, attr in self.defn.queries.items():
                self.query_handlers[q] = getattr(instance, attr)
        self._main = self.loop.create_task(self._run_main(run), context=self._context)

    async def _run_main(self, run: Callable[..., Any]) -> None:
        try:
            args = (self._input,) if _wants_arg(run) else ()
            value = await run(*args)
            try:
                result = json_value(value)
            except (TypeError, ValueError, OverflowError, RecursionError) as e:
                failure = failure_of(e) | {
                    "message": f"result is not JSON-serializable: {e}",
                    "type": "SerializationError",
                    "non_retryable": True,
                }
                self._close({"type": "FailWorkflowExecution", "failure": failure})
                return
            self._close({"type": "CompleteWorkflowExecution", "result": result})
        except ContinueAsNew as c:
            self._close(c.command)
        except asyncio.CancelledError as e:
            if self.cancel_requested:
                self._close({"type": "CancelWorkflowExecution"})
            else:
                self._close({"type": "FailWorkflowExecution", "failure": failure_of(e)})
        except WorkflowTaskError as e:
            self._on_violation(e)
        except Exception as e:  # noqa: BLE001 - any failure of the code fails the run
            self._close({"type": "FailWorkflowExecution", "failure": failure_of(e)})

    def _close(self, body: dict[str, Any]) -> None:
        self.closed = True
        self._step_commands.append(Command(body, "workflow end"))

    def _on_violation(self, err: WorkflowTaskError) -> None:
        if self._violation is None:
            self._violation = err

    # -- matching commands to history ----------------------------------------------------

    def _match(self, e: Event) -> None:
        if not self._expected:
            raise NonDeterminismError(
                f"workflow {self.info.workflow_type} (run {self.info.run_id}): history has "
                f"{e.summary()}, but the code issued no command for it"
            )
        cmd = self._expected.popleft()
        want = COMMAND_EVENTS.get(e.type) or MAYBE_COMMAND_EVENTS.get(e.type)
        b = cmd.body
        ok = cmd.type == want
        if ok and cmd.type == "ScheduleActivityTask":
            ok = (e.attr("activityId") == b["activity_id"]
                  and e.name_of("activityType") == b["activity_type"])
            if ok:
                self._activities_by_event[e.id] = b["activity_id"]
                act = self._activities.get(b["activity_id"])
                if act is not None:
                    act.scheduled_event_id = e.id
        elif ok and cmd.type in ("StartTimer", "CancelTimer"):
            ok = e.attr("timerId") == b["timer_id"]
        elif ok and cmd.type == "RequestCancelActivityTask":
            ok = e.attr("scheduledEventId") == b["scheduled_event_id"]
        elif ok and cmd.type == "RecordMarker":
            ok = e.attr("markerName") == b["marker_name"]
        elif ok and cmd.type == "StartChildWorkflowExecution":
            ok = (_child_workflow_id(e) == b["workflow_id"]
                  and e.name_of("workflowType") == b["workflow_type"])
            if ok:
                self._children_by_event[e.id] = b["workflow_id"]
                child = self._children.get(b["workflow_id"])
                if child is not None:
                    child.initiated_event_id = e.id
        elif ok and cmd.type in ("SignalExternalWorkflowExecution",
                                 "RequestCancelExternalWorkflowExecution"):
            ok = _child_workflow_id(e) == b["workflow_id"] and (
                cmd.type != "SignalExternalWorkflowExecution"
                or e.attr("signalName") == b["signal_name"])
            if ok and cmd.ref is not None:
                self._externals_by_event[e.id] = cmd.ref
        if not ok:
            raise NonDeterminismError(
                f"workflow {self.info.workflow_type} (run {self.info.run_id}) is not "
                f"deterministic: history has {e.summary()}, but the code issued "
                f"{cmd.summary()} at {cmd.source}"
            )

    def _not_in_history(self, cmd: Command, at: Event | None) -> None:
        where = f"before {at.summary()}" if at is not None else "at the end of the history"
        raise NonDeterminismError(
            f"workflow {self.info.workflow_type} (run {self.info.run_id}) is not deterministic: "
            f"the code issued {cmd.summary()} at {cmd.source}, but history has no event for it "
            f"({where})"
        )

    # -- events that resolve what the code awaits ------------------------------------------

    def _apply(self, e: Event) -> None:
        t = e.type
        if t in ("ACTIVITY_TASK_COMPLETED", "ACTIVITY_TASK_FAILED", "ACTIVITY_TASK_TIMED_OUT",
                 "ACTIVITY_TASK_CANCELED"):
            aid = self._activities_by_event.get(e.attr("scheduledEventId"))
            act = self._activities.pop(aid, None) if aid is not None else None
            if act is None or act.future.done():
                return
            if t == "ACTIVITY_TASK_COMPLETED":
                act.future.set_result(e.attr("result"))
            elif t == "ACTIVITY_TASK_CANCELED":
                act.future.set_exception(
                    ActivityError({"message": "activity canceled", "type": "CanceledError"}))
            else:
                failure = e.attr("failure")
                act.future.set_exception(ActivityError(failure if isinstance(failure, dict) else {
                    "message": f"activity {t.rsplit('_', 1)[-1].lower()}", "type": "ActivityError"}))
        elif t == "TIMER_FIRED":
            tid = e.attr("timerId")
            handle = self._timers.pop(tid, None) if isinstance(tid, str) else None
            if handle is not None and not handle.cancelled():
                self.loop.schedule(handle)
        elif t == "WORKFLOW_EXECUTION_SIGNALED":
            name = e.attr("signalName", "signal_name")
            if isinstance(name, str):
                self._deliver_signal(name, e.attr("input"))
        elif t == "WORKFLOW_EXECUTION_CANCEL_REQUESTED":
            self.cancel_requested = True
            if self._main is not None and not self._main.done():
                self._main.cancel()
        elif t.startswith("CHILD_WORKFLOW_EXECUTION_") or t == "START_CHILD_WORKFLOW_EXECUTION_FAILED":
            self._apply_child(e)
        elif t in ("EXTERNAL_WORKFLOW_EXECUTION_SIGNALED", "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED",
                   "EXTERNAL_WORKFLOW_EXECUTION_CANCEL_REQUESTED",
                   "REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_FAILED"):
            ext = self._externals_by_event.pop(e.attr("initiatedEventId"), None)
            if ext is None or ext.future.done():
                return
            if t.endswith("_FAILED"):
                ext.future.set_exception(ExternalWorkflowError(
                    f"could not {ext.what} workflow {_child_workflow_id(e)}: {e.attr('cause')}"))
            else:
                ext.future.set_result(None)

    def _apply_child(self, e: Event) -> None:
        init = e.attr("initiatedEventId", "initiated_event_id")
        wid = self._children_by_event.get(init) if isinstance(init, int) else None
        wid = wid or _child_workflow_id(e)
        child = self._children.get(wid) if wid else None
        if child is None:
            return
        t = e.type
        if t == "CHILD_WORKFLOW_EXECUTION_STARTED":
            run_id = _child_run_id(e)
            child.run_id = run_id
            if not child.started.done():
                child.started.set_result(run_id or "")
            return
        self._children.pop(wid, None)  # type: ignore[arg-type]
        if not child.started.done():
            child.started.set_result(_child_run_id(e) or "")
        if child.future.done():
            return
        if t == "CHILD_WORKFLOW_EXECUTION_COMPLETED":
            child.future.set_result(e.attr("result"))
            return
        failure = e.attr("failure")
        failure = failure if isinstance(failure, dict) else {}
        outcome = t.replace("CHILD_WORKFLOW_EXECUTION_", "").lower()
        if t == "START_CHILD_WORKFLOW_EXECUTION_FAILED":
            cause = e.attr("cause")
            msg = f"child workflow {wid} could not start" + (f": {cause}" if cause else "")
        else:
            msg = f"child workflow {wid} {outcome}" + (
                f": {failure['message']}" if failure.get("message") else "")
        child.future.set_exception(ChildWorkflowError(msg, failure))

    def _deliver_signal(self, name: str, value: Any) -> None:
        handler = self._signal_handlers.get(name)
        if handler is None:
            self._buffered_signals.setdefault(name, []).append(value)
            return
        self._call_signal_handler(handler, value)

    def _call_signal_handler(self, handler: Callable[..., Any], value: Any) -> None:
        try:
            out = handler(value) if _wants_arg(handler) else handler()
        except Exception as e:  # noqa: BLE001 - a failing handler fails the run
            if isinstance(e, WorkflowTaskError):
                self._on_violation(e)
            elif not self.closed:
                self._close({"type": "FailWorkflowExecution", "failure": failure_of(e)})
            return
        if inspect.isawaitable(out):
            self.loop.create_task(_await(out), context=self._context)

    # -- what the workflow API calls (inside a step) ---------------------------------------

    def _issue(self, body: dict[str, Any]) -> Command:
        if self.closed:
            raise WorkflowTaskError("the workflow already finished; no more commands")
        cmd = Command(body, _code_line())
        self._step_commands.append(cmd)
        return cmd

    def schedule_activity(self, body: dict[str, Any]) -> asyncio.Future[Any]:
        self._seq["activity"] += 1
        body.setdefault("activity_id", str(self._seq["activity"]))
        aid = body["activity_id"]
        if aid in self._activities:
            raise WorkflowTaskError(f"activity id {aid!r} is already in use in this run")
        cmd = self._issue(body)
        fut: asyncio.Future[Any] = self.loop.create_future()
        self._activities[aid] = _Activity(fut, cmd)
        return fut

    def cancel_activity(self, activity_id: str) -> None:
        """The awaiting code was cancelled: ask the server to cancel the activity (try-cancel)."""
        act = self._activities.get(activity_id)
        if act is None or self.closed:
            return
        if act.command in self._step_commands:  # not sent yet: just don't send it
            self._step_commands.remove(act.command)
            self._activities.pop(activity_id, None)
            return
        if act.scheduled_event_id is not None:
            self._issue({"type": "RequestCancelActivityTask",
                         "scheduled_event_id": act.scheduled_event_id})

    def start_timer(
        self, delay: float, callback: Callable[..., Any], args: tuple[Any, ...],
        context: contextvars.Context | None,
    ) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(self.now_ms / 1000.0 + delay, callback, args, self.loop,
                                     context)
        if delay <= 0:
            self.loop.schedule(handle)
            return handle
        self._seq["timer"] += 1
        tid = str(self._seq["timer"])
        handle._scheduled = True  # type: ignore[attr-defined]  # cancel() tells the loop
        self._timers[tid] = handle
        self._timer_ids[id(handle)] = tid
        self._issue({"type": "StartTimer", "timer_id": tid,
                     "start_to_fire_timeout_ms": max(1, round(delay * 1000))})
        return handle

    def cancel_timer(self, handle: asyncio.TimerHandle) -> None:
        tid = self._timer_ids.pop(id(handle), None)
        if tid is None or self._timers.pop(tid, None) is None or self.closed:
            return
        for cmd in self._step_commands:
            if cmd.type == "StartTimer" and cmd.body["timer_id"] == tid:
                self._step_commands.remove(cmd)  # started and cancelled in one step: neither
                return
        self._issue({"type": "CancelTimer", "timer_id": tid})

    def start_child(self, body: dict[str, Any]) -> _Child:
        self._seq["child"] += 1
        body.setdefault("workflow_id", f"{self.info.workflow_id}-child-{self._seq['child']}")
        wid = body["workflow_id"]
        if wid in self._children:
            raise WorkflowTaskError(f"child workflow id {wid!r} is already in use in this run")
        cmd = self._issue(body)
        child = _Child(self.loop.create_future(), cmd, self.loop.create_future())
        self._children[wid] = child
        return child

    def external(self, body: dict[str, Any], what: str) -> asyncio.Future[None]:
        """Signal or cancel another workflow; the future resolves when the server did it."""
        cmd = self._issue(body)
        ext = _External(self.loop.create_future(), what)
        cmd.ref = ext
        return ext.future

    def side_effect(self, fn: Callable[[], Any]) -> Any:
        self._seq["side_effect"] += 1
        n = self._seq["side_effect"]
        if n in self._side_effects:
            value = self._side_effects[n]
        else:
            if self.replaying:
                raise NonDeterminismError(
                    f"workflow {self.info.workflow_type}: side_effect #{n} at {_code_line()} "
                    "has no recorded value in history"
                )
            value = json_value(fn())
        self._issue({"type": "RecordMarker", "marker_name": MARKER_SIDE_EFFECT,
                     "details": {"id": n, "value": value}})
        return value

    def patched(self, patch_id: str) -> bool:
        if patch_id in self._patches:
            return self._patches[patch_id]
        use_new = patch_id in self._patches_in_step if self.replaying else True
        self._patches[patch_id] = use_new
        if use_new:
            self._issue({"type": "RecordMarker", "marker_name": MARKER_PATCH,
                         "details": {"id": patch_id}})
        return use_new

    def upsert_search_attributes(self, attrs: dict[str, Any]) -> None:
        self._issue({"type": "UpsertSearchAttributes", "search_attributes": attrs})

    def add_condition(self, fn: Callable[[], Any]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        entry = (fn, fut)
        self._conditions.append(entry)
        fut.add_done_callback(lambda _f: self._conditions.remove(entry))
        return fut

    def set_signal_handler(self, name: str, fn: Callable[..., Any] | None) -> None:
        if fn is None:
            self._signal_handlers.pop(name, None)
            return
        self._signal_handlers[name] = fn
        for value in self._buffered_signals.pop(name, []):
            self._call_signal_handler(fn, value)

    # -- queries (from the worker, between steps) ------------------------------------------

    def query(self, name: str, args: Any) -> Any:
        """Run query handler ``name`` on the current state; it may not issue commands."""
        handler = self.query_handlers.get(name)
        if handler is None:
            raise KeyError(name)
        with self.lock:
            try:
                with self._entered():
                    before = len(self._step_commands)
                    was, violation = self.replaying, self._violation
                    self.replaying = True  # a query's log lines are not the run's
                    try:
                        out = handler(args) if _wants_arg(handler) else handler()
                    finally:
                        # A query's mistakes fail the query, not the run's next task.
                        self.replaying, self._violation = was, violation
                        del self._step_commands[before:]
            finally:
                self.close_if_doomed()
        if inspect.isawaitable(out):
            close = getattr(out, "close", None)
            if close is not None:
                close()
            raise TypeError("query handlers must be plain functions, not coroutines")
        return out

    def close(self) -> None:
        """Drop the coroutine (eviction): its pending tasks are cancelled and abandoned.

        Called from any thread; when a step or query holds the executor, the
        close happens as that step ends (``close_if_doomed``).
        """
        if not self.lock.acquire(blocking=False):
            self._doomed = True
            return
        try:
            self._close_locked()
        finally:
            self.lock.release()

    def close_if_doomed(self) -> None:
        """With ``lock`` held, after a step: finish a close that was asked for meanwhile."""
        if self._doomed:
            self._close_locked()

    def _close_locked(self) -> None:
        if self.loop.is_closed():
            return
        if self._main is not None and not self._main.done():
            with self._entered():
                self._main.cancel()
                try:
                    self.loop.run_ready(self._sandbox.arm)
                except BaseException:  # noqa: BLE001 - best effort
                    pass
        self.loop.close()

    def random_uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)


async def _await(aw: Any) -> Any:
    return await aw


def _wants_arg(fn: Callable[..., Any]) -> bool:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return True
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
        for p in sig.parameters.values()
    )


def _child_workflow_id(e: Event) -> str | None:
    v = e.attr("workflowId", "workflow_id")
    if isinstance(v, str):
        return v
    ex = e.attr("workflowExecution", "execution")
    if isinstance(ex, dict) and isinstance(ex.get("workflowId"), str):
        return str(ex["workflowId"])
    return None


def _child_run_id(e: Event) -> str | None:
    v = e.attr("runId", "run_id")
    if isinstance(v, str):
        return v
    ex = e.attr("workflowExecution", "execution")
    if isinstance(ex, dict) and isinstance(ex.get("runId"), str):
        return str(ex["runId"])
    return None


__all__ += ["StepResult", "WorkflowSandboxError", "failure_of", "in_workflow"]
