"""A run's history written the way the shard writes it, for executor tests.

Why not a mock of the executor: these tests drive the real executor with real
events; only the server's side (turning commands into events, closing
activities, firing timers) is played here, by the rules of SPEC §5.5/§5.6, so
that each test reads as a story of one run. Every workflow task can also be
answered by a *fresh* executor fed the whole history (a sticky-cache miss),
and its commands must be the same as the live one's.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.protocol.timefmt import format_time
from hanzo_tasks.workflow import WorkflowExecutor, WorkflowInfo
from hanzo_tasks.workflow.definitions import workflow_definition_of
from hanzo_tasks.workflow.history import events_of

START_MS = 1_765_000_000_000
TERMINAL = ("CompleteWorkflowExecution", "FailWorkflowExecution", "CancelWorkflowExecution",
            "ContinueAsNew")


class FakeRun:
    def __init__(self, wf: Any, input: Any = None, *, run_id: str = "run-1",  # noqa: A002
                 workflow_id: str = "wf-1", check_fresh: bool = True) -> None:
        self.defn = workflow_definition_of(wf)
        self.info = WorkflowInfo(workflow_id, run_id, self.defn.name, task_queue="q")
        self.now_ms = START_MS
        self.events: list[dict[str, Any]] = []
        self.check_fresh = check_fresh
        self.executor = WorkflowExecutor(self.defn, self.info)
        self.activities: dict[str, int] = {}  # activity id -> scheduled event id
        self.timers: dict[str, int] = {}
        self.children: dict[str, int] = {}
        self.closed: str | None = None
        self.result: Any = None
        self.wt_pending = False
        self.commands_log: list[list[dict[str, Any]]] = []
        self.unknown_workflows: set[str] = set()
        self._outcomes = []
        self.add("WORKFLOW_EXECUTION_STARTED", workflowType={"name": self.defn.name},
                 taskQueue={"name": "q"}, input=input, attempt=1)
        self.schedule_task()

    # -- writing events ----------------------------------------------------------------

    def add(self, etype: str, **attrs: Any) -> int:
        eid = len(self.events) + 1
        self.events.append({"eventId": eid, "eventTime": format_time(self.now_ms),
                            "eventType": etype, "attributes": attrs})
        return eid

    def schedule_task(self) -> None:
        if not self.wt_pending and self.closed is None:
            self.wt_pending = True
            self.add("WORKFLOW_TASK_SCHEDULED", attempt=1)

    def advance(self, seconds: float) -> None:
        self.now_ms += int(seconds * 1000)

    # -- a workflow task -----------------------------------------------------------------

    def run_task(self, *, fail_task: bool = False) -> list[dict[str, Any]]:
        """Deliver the pending workflow task (sticky executor) and apply its commands."""
        assert self.wt_pending, "no workflow task is pending"
        started = self.add("WORKFLOW_TASK_STARTED", scheduledEventId=len(self.events))
        res = self.executor.activate(events_of(self.events))
        assert res is not None
        if self.check_fresh:
            fresh = WorkflowExecutor(self.defn, self.info)
            again = fresh.activate(events_of(self.events))
            assert again is not None and again.commands == res.commands, (again, res)
            fresh.close()
        self.wt_pending = False
        if fail_task:  # a worker that fails a task drops its executor (evicts it)
            self.executor.close()
            self.executor = WorkflowExecutor(self.defn, self.info)
            self.add("WORKFLOW_TASK_FAILED", scheduledEventId=started - 1, startedEventId=started,
                     cause="worker_failed")
            self.schedule_task()
            return res.commands
        done = self.add("WORKFLOW_TASK_COMPLETED", scheduledEventId=started - 1,
                        startedEventId=started)
        self.commands_log.append(res.commands)
        # As the shard writes them: command events in order, then the outcomes of the
        # external commands, then the terminal command's event.
        self._outcomes: list[tuple[str, dict[str, Any]]] = []
        terminal = [c for c in res.commands if c["type"] in TERMINAL]
        for c in res.commands:
            if c["type"] not in TERMINAL:
                self._apply(c, done)
        for etype, attrs in self._outcomes:
            self.add(etype, **attrs)
        if self._outcomes and not terminal:  # outcomes are trigger events
            self.schedule_task()
        for c in terminal:
            self._apply(c, done)
        return res.commands

    def _apply(self, c: dict[str, Any], done: int) -> None:
        t = c["type"]
        if t == "ScheduleActivityTask":
            aid = c.get("activity_id") or str(len(self.events) + 1)
            self.activities[aid] = self.add(
                "ACTIVITY_TASK_SCHEDULED", activityId=aid,
                activityType={"name": c["activity_type"]}, input=c.get("input"),
                workflowTaskCompletedEventId=done)
        elif t == "StartTimer":
            self.timers[c["timer_id"]] = self.add("TIMER_STARTED", timerId=c["timer_id"],
                                                  startToFireTimeout=c["start_to_fire_timeout_ms"])
        elif t == "CancelTimer":
            seid = self.timers.pop(c["timer_id"])
            self.add("TIMER_CANCELED", timerId=c["timer_id"], startedEventId=seid)
        elif t == "RequestCancelActivityTask":
            self.add("ACTIVITY_TASK_CANCEL_REQUESTED", scheduledEventId=c["scheduled_event_id"])
        elif t == "RecordMarker":
            self.add("MARKER_RECORDED", markerName=c["marker_name"], details=c.get("details"))
        elif t == "UpsertSearchAttributes":
            self.add("UPSERT_WORKFLOW_SEARCH_ATTRIBUTES", searchAttributes=c["search_attributes"])
        elif t == "StartChildWorkflowExecution":
            self.children[c["workflow_id"]] = self.add(
                "START_CHILD_WORKFLOW_EXECUTION_INITIATED", workflowId=c["workflow_id"],
                workflowType={"name": c["workflow_type"]}, input=c.get("input"))
        elif t in ("SignalExternalWorkflowExecution", "RequestCancelExternalWorkflowExecution"):
            target = {"workflowId": c["workflow_id"]}
            what = "SIGNAL" if t.startswith("Signal") else "REQUEST_CANCEL"
            attrs: dict[str, Any] = {"workflowExecution": target}
            if what == "SIGNAL":
                attrs.update(signalName=c["signal_name"], input=c.get("input"))
            eid = self.add(f"{what}_EXTERNAL_WORKFLOW_EXECUTION_INITIATED", **attrs)
            if c["workflow_id"] in self.unknown_workflows:
                self._outcomes.append((f"{what}_EXTERNAL_WORKFLOW_EXECUTION_FAILED", {
                    "initiatedEventId": eid, "workflowExecution": target,
                    "cause": "EXTERNAL_WORKFLOW_EXECUTION_NOT_FOUND"}))
            else:
                done_type = ("EXTERNAL_WORKFLOW_EXECUTION_SIGNALED" if what == "SIGNAL"
                             else "EXTERNAL_WORKFLOW_EXECUTION_CANCEL_REQUESTED")
                self._outcomes.append((done_type, {"initiatedEventId": eid,
                                                   "workflowExecution": target}))
        elif t == "CompleteWorkflowExecution":
            self.closed, self.result = "COMPLETED", c.get("result")
            self.add("WORKFLOW_EXECUTION_COMPLETED", result=c.get("result"))
        elif t == "FailWorkflowExecution":
            self.closed, self.result = "FAILED", c["failure"]
            self.add("WORKFLOW_EXECUTION_FAILED", failure=c["failure"])
        elif t == "CancelWorkflowExecution":
            self.closed = "CANCELED"
            self.add("WORKFLOW_EXECUTION_CANCELED")
        elif t == "ContinueAsNew":
            self.closed, self.result = "CONTINUED_AS_NEW", c.get("input")
            self.add("WORKFLOW_EXECUTION_CONTINUED_AS_NEW", newExecutionRunId="run-2",
                     workflowType={"name": c.get("workflow_type") or self.defn.name},
                     input=c.get("input"))
        else:
            raise AssertionError(f"unexpected command {c}")

    # -- the world -----------------------------------------------------------------------

    def complete_activity(self, aid: str, result: Any) -> None:
        seid = self.activities.pop(aid)
        st = self.add("ACTIVITY_TASK_STARTED", scheduledEventId=seid, attempt=1)
        self.add("ACTIVITY_TASK_COMPLETED", scheduledEventId=seid, startedEventId=st,
                 result=result)
        self.schedule_task()

    def fail_activity(self, aid: str, message: str) -> None:
        seid = self.activities.pop(aid)
        st = self.add("ACTIVITY_TASK_STARTED", scheduledEventId=seid, attempt=1)
        self.add("ACTIVITY_TASK_FAILED", scheduledEventId=seid, startedEventId=st,
                 failure={"message": message, "type": "ValueError"},
                 retryState="NON_RETRYABLE_FAILURE")
        self.schedule_task()

    def fire_timer(self, tid: str) -> None:
        seid = self.timers.pop(tid)
        self.add("TIMER_FIRED", timerId=tid, startedEventId=seid)
        self.schedule_task()

    def signal(self, name: str, value: Any = None) -> None:
        self.add("WORKFLOW_EXECUTION_SIGNALED", signalName=name, input=value, identity="t")
        self.schedule_task()

    def cancel(self) -> None:
        self.add("WORKFLOW_EXECUTION_CANCEL_REQUESTED", reason="test", identity="t")
        self.schedule_task()

    def child_started(self, wid: str) -> None:
        self.add("CHILD_WORKFLOW_EXECUTION_STARTED", initiatedEventId=self.children[wid],
                 workflowExecution={"workflowId": wid, "runId": "child-run"})

    def child_completed(self, wid: str, result: Any) -> None:
        init = self.children.pop(wid)
        self.add("CHILD_WORKFLOW_EXECUTION_COMPLETED", initiatedEventId=init,
                 workflowExecution={"workflowId": wid, "runId": "child-run"}, result=result)
        self.schedule_task()

    def child_failed(self, wid: str, message: str) -> None:
        init = self.children.pop(wid)
        self.add("CHILD_WORKFLOW_EXECUTION_FAILED", initiatedEventId=init,
                 workflowExecution={"workflowId": wid, "runId": "child-run"},
                 failure={"message": message, "type": "ValueError"})
        self.schedule_task()
