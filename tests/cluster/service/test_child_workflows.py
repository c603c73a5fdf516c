"""Child workflows end to end (SPEC §5.6, amended): a node in this process
(``hanzo_tasks.testing``: real HTTP and ZAP, fake clock) and raw ZAP workers
that answer workflow tasks with commands by hand."""

from __future__ import annotations

from typing import Any

from hanzo_tasks.protocol.zap import Op

from tests.cluster.dispatch.test_dispatch import WF, RawWorker
from tests.cluster.service.test_workflow_commands import describe, respond, start


def history(node: Any, wid: str) -> list[dict[str, Any]]:
    status, body = node.get(f"{WF}/{wid}/history?pageSize=1000")
    assert status == 200, body
    events: list[dict[str, Any]] = body["events"]
    return events


def test_parent_starts_a_child_and_receives_its_result(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr, tq="q")
    kids = RawWorker(addr, tq="kids")
    try:
        start(node, "order-1", input={"items": 3})
        task = w.next_task()
        assert task["workflow_id"] == "order-1"
        r = respond(w, task, {"type": "StartChildWorkflowExecution", "workflow_type": "Pack",
                              "task_queue": "kids", "input": {"items": 3}, "workflow_run_timeout_ms": 60_000,
                              "parent_close_policy": "PARENT_CLOSE_POLICY_ABANDON"})
        assert r["status"] == 200, r
        # The parent's next task carries the child's start ...
        task = w.next_task()
        kinds = [e["eventType"] for e in task["history"]]
        assert "CHILD_WORKFLOW_EXECUTION_STARTED" in kinds, kinds
        started = next(e for e in task["history"] if e["eventType"] == "CHILD_WORKFLOW_EXECUTION_STARTED")
        child_id = started["attributes"]["workflowExecution"]["workflowId"]
        assert child_id == "order-1-child-5"
        assert respond(w, task)["status"] == 200  # nothing to do until the child is done
        # ... and the child runs on its own queue, as a run of its own.
        ctask = kids.next_task()
        assert ctask["workflow_id"] == child_id and ctask["input"] == {"items": 3}
        first = ctask["history"][0]["attributes"]
        assert first["parentWorkflowExecution"]["workflowId"] == "order-1"
        assert respond(kids, ctask, {"type": "CompleteWorkflowExecution", "result": {"box": "B-7"}})["status"] == 200
        task = w.next_task()
        done = next(e for e in task["history"] if e["eventType"] == "CHILD_WORKFLOW_EXECUTION_COMPLETED")
        assert done["attributes"]["result"] == {"box": "B-7"}
        assert done["attributes"]["workflowExecution"]["runId"] == started["attributes"]["workflowExecution"]["runId"]
        assert respond(w, task, {"type": "CompleteWorkflowExecution", "result": "shipped"})["status"] == 200
        assert describe(node, "order-1")["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
        # HTTP history shows the new events in the same JSON shapes as the others.
        shown = {e["eventType"]: e["attributes"] for e in history(node, "order-1")}
        init = shown["START_CHILD_WORKFLOW_EXECUTION_INITIATED"]
        assert init["workflowRunTimeout"] == "1m" and init["parentClosePolicy"] == "ABANDON"
        assert init["taskQueue"] == {"name": "kids"} and init["workflowType"] == {"name": "Pack"}
    finally:
        w.close()
        kids.close()


def test_terminating_a_parent_applies_its_close_policy(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "parent-2")
        task = w.next_task()
        r = respond(w, task, {"type": "StartChildWorkflowExecution", "workflow_type": "Job", "workflow_id": "c-t",
                              "task_queue": "idle"},
                    {"type": "StartChildWorkflowExecution", "workflow_type": "Job", "workflow_id": "c-a",
                     "task_queue": "idle", "parent_close_policy": "ABANDON"},
                    {"type": "SignalExternalWorkflowExecution", "workflow_id": "c-a", "signal_name": "hello",
                     "child_workflow_only": True})
        assert r["status"] == 200, r
        assert node.post(f"{WF}/parent-2/terminate", {"reason": "ops"})[0] == 200
        assert describe(node, "c-t")["status"] == "WORKFLOW_EXECUTION_STATUS_TERMINATED"
        assert describe(node, "c-a")["status"] == "WORKFLOW_EXECUTION_STATUS_RUNNING"
        signaled = next(e for e in history(node, "c-a") if e["eventType"] == "WORKFLOW_EXECUTION_SIGNALED")
        assert signaled["attributes"]["signalName"] == "hello"
    finally:
        w.close()


def test_invalid_child_and_external_commands_are_reported_by_index(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr, slots=8)
    cases = [
        {"type": "StartChildWorkflowExecution"},  # no workflow_type
        {"type": "StartChildWorkflowExecution", "workflow_type": "J", "parent_close_policy": "SOMETIMES"},
        {"type": "StartChildWorkflowExecution", "workflow_type": "J", "id_conflict_policy": "USE_EXISTING"},
        {"type": "StartChildWorkflowExecution", "workflow_type": "J", "workflow_run_timeout_ms": -5},
        {"type": "SignalExternalWorkflowExecution", "workflow_id": "x"},  # no signal_name
        {"type": "RequestCancelExternalWorkflowExecution", "workflow_id": "x", "child_workflow_only": "yes"},
    ]
    try:
        for i in range(len(cases)):
            start(node, f"bad-{i}")
        for _ in cases:
            task = w.next_task()
            i = int(task["workflow_id"].split("-")[1])
            r = w.call(Op.RespondWorkflowTaskCompleted, {"task_token": task["task_token"], "commands": [
                {"type": "RecordMarker", "marker_name": "m"}, cases[i]]})
            assert r["status"] == 400 and r["error"]["details"]["command_index"] == 1, (cases[i], r)
        for i in range(len(cases)):
            kinds = [e["eventType"] for e in history(node, f"bad-{i}")]
            assert "START_CHILD_WORKFLOW_EXECUTION_INITIATED" not in kinds and "MARKER_RECORDED" not in kinds
            assert kinds.count("WORKFLOW_TASK_FAILED") == 1
    finally:
        w.close()
