"""Workflow task commands (SPEC §5.6, 0x00A2) through a real node and raw ZAP workers.

The node runs in this process (``hanzo_tasks.testing``): a timer's due time is
reached by advancing its clock, not by sleeping.
"""

from __future__ import annotations

import time
from typing import Any

from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.zap import Op

from tests.cluster.dispatch.test_dispatch import WF, RawWorker, events

NS = "/v1/tasks/namespaces/default"


def start(node: Any, wid: str, **extra: Any) -> None:
    status, body = node.post(WF, {"workflowId": wid, "workflowType": {"name": "Job"}, "taskQueue": {"name": "q"},
                                  **extra})
    assert status == 200, body


def respond(w: RawWorker, task: dict[str, Any], *commands: dict[str, Any]) -> dict[str, Any]:
    return w.call(Op.RespondWorkflowTaskCompleted, {"task_token": task["task_token"], "commands": list(commands)})


def describe(node: Any, wid: str, rid: str | None = None) -> dict[str, Any]:
    status, body = node.get(f"{WF}/{wid}" + (f"?runId={rid}" if rid else ""))
    assert status == 200, body
    return body["workflowExecutionInfo"]


COMPLETE = {"type": "CompleteWorkflowExecution", "result": "done"}


def test_timer_fires_after_its_duration_and_triggers_a_task(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "timer-1")
        task = w.next_task()
        began = time.monotonic()
        r = respond(w, task, {"type": "StartTimer", "timer_id": "t1", "start_to_fire_timeout_ms": 400})
        assert r["status"] == 200, r
        task = w.next_task(timeout=10)
        assert time.monotonic() - began >= 0.35
        kinds = [e["eventType"] for e in task["history"]]
        assert kinds[-4:-2] == ["TIMER_STARTED", "TIMER_FIRED"], kinds
        fired = next(e for e in task["history"] if e["eventType"] == "TIMER_FIRED")
        assert fired["attributes"]["timerId"] == "t1"
        assert respond(w, task, COMPLETE)["status"] == 200
        assert describe(node, "timer-1")["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    finally:
        w.close()


def test_canceled_timer_never_fires_and_unknown_timer_is_a_bad_command(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "timer-2")
        task = w.next_task()
        due = time.monotonic() + 2.5
        assert respond(w, task, {"type": "StartTimer", "timer_id": "t1", "start_to_fire_timeout_ms": 2500})["status"] == 200
        status, body = node.post(f"{WF}/timer-2/signal", {"name": "go"})
        assert status == 200, body
        task = w.next_task()
        r = respond(w, task, {"type": "CancelTimer", "timer_id": "nope"})
        assert r["status"] == 400 and r["error"]["details"]["command_index"] == 0, r
        task = w.next_task(timeout=10)  # the failed task is retried (after back-off)
        assert respond(w, task, {"type": "CancelTimer", "timer_id": "t1"})["status"] == 200
        node.clock.advance(max(0.0, due - time.monotonic()))  # past the timer's due time:
        time.sleep(0.5)  # a run-timer scan (every 0.25 s) later: no TIMER_FIRED, no task
        assert "TIMER_FIRED" not in events(node, "timer-2")
        assert "TIMER_CANCELED" in events(node, "timer-2")
        assert not w.pushes
    finally:
        w.close()


def test_invalid_lists_apply_nothing(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr, slots=8)
    cases = [
        ([{"type": "StartTimer", "timer_id": "a", "start_to_fire_timeout_ms": 100},
          {"type": "StartTimer", "timer_id": "a", "start_to_fire_timeout_ms": 100}], 1),  # duplicate timerId
        ([{"type": "StartTimer", "timer_id": "a", "start_to_fire_timeout_ms": 0}], 0),  # not > 0
        ([{"type": "RecordMarker", "marker_name": "m"}, {"type": "Bogus"}], 1),
        ([COMPLETE, {"type": "RecordMarker", "marker_name": "m"}], 0),  # terminal not last
        ([{"type": "RequestCancelActivityTask", "scheduled_event_id": 99}], 0),  # unknown activity
        ([{"type": "ScheduleActivityTask", "activity_type": "x/../y"}], 0),  # bad name
        ([{"type": "UpsertSearchAttributes", "search_attributes": {"Unregistered": 1}}], 0),
        ([{"type": "ContinueAsNew", "workflow_run_timeout_ms": -1}], 0),
        ([{"type": "CancelWorkflowExecution"}], 0),  # no cancel requested
    ]
    try:
        for i in range(len(cases)):
            start(node, f"bad-{i}")
        for _ in cases:
            task = w.next_task()
            i = int(task["workflow_id"].split("-")[1])
            commands, index = cases[i]
            r = respond(w, task, *commands)
            assert r["status"] == 400, (commands, r)
            assert r["error"]["details"]["command_index"] == index, (commands, r)
        for i in range(len(cases)):
            kinds = events(node, f"bad-{i}")
            for k in ("TIMER_STARTED", "MARKER_RECORDED", "WORKFLOW_TASK_COMPLETED"):
                assert k not in kinds, kinds
            assert kinds.count("WORKFLOW_TASK_FAILED") == 1
    finally:
        w.close()


def test_scheduled_activity_runs_on_an_activity_worker_and_its_result_triggers_a_task(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    a = RawWorker(addr, tq="acts")
    try:
        assert a.call(Op.SubscribeActivityTasks, {"task_queue": "acts", "max_concurrent": 2})["status"] == 200
        start(node, "act-1")
        task = w.next_task()
        r = respond(w, task, {"type": "ScheduleActivityTask", "activity_type": "charge", "task_queue": "acts",
                              "input": 7, "start_to_close_timeout_ms": 5000})
        assert r["status"] == 200, r
        deadline = time.monotonic() + 10
        while not any(f.opcode == Op.DeliverActivityTask for f, _ in a.pushes) and time.monotonic() < deadline:
            a._pump(0.5)
        f, act = next((f, b) for f, b in a.pushes if f.opcode == Op.DeliverActivityTask)
        a.sock.sendall(Z.encode_frame(Z.PUSH_ACK, f.opcode, f.frame_id, {"status": 200}))
        assert act["activity_type"] == "charge" and act["input"] == 7 and act["workflow_id"] == ""
        r = a.call(Op.RespondActivityTaskCompleted, {"task_token": act["task_token"], "result": 14})
        assert r["status"] == 200, r
        task = w.next_task(timeout=10)
        kinds = [e["eventType"] for e in task["history"]]
        assert ["ACTIVITY_TASK_SCHEDULED", "ACTIVITY_TASK_STARTED", "ACTIVITY_TASK_COMPLETED"] == [
            k for k in kinds if k.startswith("ACTIVITY_")], kinds
        done = next(e for e in task["history"] if e["eventType"] == "ACTIVITY_TASK_COMPLETED")
        assert done["attributes"]["result"] == 14
        assert respond(w, task, COMPLETE)["status"] == 200
    finally:
        w.close()
        a.close()


def test_cancel_of_a_not_started_activity_is_immediate(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "act-2")
        task = w.next_task()
        r = respond(w, task, {"type": "ScheduleActivityTask", "activity_type": "slow", "task_queue": "nobody"})
        assert r["status"] == 200, r
        seid = next(e["eventId"] for e in node.get(f"{WF}/act-2/history")[1]["events"]
                    if e["eventType"] == "ACTIVITY_TASK_SCHEDULED")
        status, _ = node.post(f"{WF}/act-2/signal", {"name": "stop"})
        assert status == 200
        task = w.next_task()
        r = respond(w, task, {"type": "RequestCancelActivityTask", "scheduled_event_id": seid})
        assert r["status"] == 200, r
        task = w.next_task(timeout=10)  # the cancel is a trigger event
        kinds = [e["eventType"] for e in task["history"]]
        assert kinds[-4:-2] == ["ACTIVITY_TASK_CANCEL_REQUESTED", "ACTIVITY_TASK_CANCELED"], kinds
        # A second cancel of the same activity is now a bad command (no longer open).
        r = respond(w, task, {"type": "RequestCancelActivityTask", "scheduled_event_id": seid})
        assert r["status"] == 400
    finally:
        w.close()


def test_continue_as_new_closes_the_run_and_starts_the_next(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    w = RawWorker(addr)
    try:
        start(node, "can-1", input=1)
        task = w.next_task()
        first = task["run_id"]
        r = respond(w, task, {"type": "ContinueAsNew", "input": 2})
        assert r["status"] == 200, r
        task = w.next_task()
        assert task["run_id"] != first and task["input"] == 2
        old = describe(node, "can-1", first)
        assert old["status"] == "WORKFLOW_EXECUTION_STATUS_CONTINUED_AS_NEW"
        assert old["nextRunId"] == task["run_id"]
        new = describe(node, "can-1")
        assert new["execution"]["runId"] == task["run_id"] and new["continuedFromRunId"] == first
        assert respond(w, task, COMPLETE)["status"] == 200
        assert describe(node, "can-1")["status"] == "WORKFLOW_EXECUTION_STATUS_COMPLETED"
    finally:
        w.close()


def test_upsert_search_attributes_merges_and_removes(inproc_zap_node) -> None:
    node, addr = inproc_zap_node
    sa = f"{NS}/search-attributes"
    assert node.post(sa, {"name": "Stage", "type": "Keyword"})[0] == 200
    assert node.post(sa, {"name": "Score", "type": "Int"})[0] == 200
    w = RawWorker(addr)
    try:
        start(node, "sa-1", searchAttributes={"Score": 1})
        task = w.next_task()
        r = respond(w, task, {"type": "UpsertSearchAttributes", "search_attributes": {"Stage": "two", "Score": None}},
                    COMPLETE)
        assert r["status"] == 200, r
        info = describe(node, "sa-1")
        assert info["searchAttrs"] == {"Stage": "two"}
        status, body = node.get(f"{WF}?query=Stage%3D%27two%27")
        assert status == 200 and [x["execution"]["workflowId"] for x in body["executions"]] == ["sa-1"], body
    finally:
        w.close()
