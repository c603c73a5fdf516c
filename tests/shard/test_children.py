"""Child workflows and external signal / cancel commands in the state machine (SPEC §5.6, amended).

Real LMDB; each test drives runs through ``wt.start`` / ``wt.complete`` the way
the dispatcher proposes them, and reads history back through ``shard.reads``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hanzo_tasks.cluster.service import render
from hanzo_tasks.shard import reads

from tests.shard.test_workflow_tasks import M

START = "StartChildWorkflowExecution"
SIGNAL = "SignalExternalWorkflowExecution"
CANCEL = "RequestCancelExternalWorkflowExecution"


def start(m: M, wid: str, **spec: Any) -> dict[str, Any]:
    res = m.do("wf.start", start={"type": "P", "workflowId": wid, "taskQueue": "q", **spec})
    assert res["ok"], res
    return res


def complete(m: M, wid: str, *commands: dict[str, Any]) -> dict[str, Any]:
    """Lease the run's scheduled task (when due) and complete it with ``commands``."""
    run = m.run(wid)
    assert run["wt"] and run["wt"]["state"] == "SCHEDULED", (wid, run.get("wt"))
    m.now = max(m.now, run["wt"]["visibleAt"])
    assert m.lease(wid)["ok"]
    return m.do("wt.complete", **m.token(wid), identity="w1", commands=list(commands))


def history(m: M, wid: str, rid: str | None = None) -> list[dict[str, Any]]:
    r = m.run(wid) if rid is None else _run(m, wid, rid)
    with m.m.store.read() as txn:
        evs, _ = reads.history(txn, "_", "default", r["runId"], 0, False, 1000, r["historyLength"])
    return evs


def _run(m: M, wid: str, rid: str) -> dict[str, Any]:
    with m.m.store.read() as txn:
        return reads.run(txn, "_", "default", wid, rid)


def last(m: M, wid: str, etype: str) -> dict[str, Any]:
    found = [e for e in history(m, wid) if e["eventType"] == etype]
    assert found, f"no {etype} in {wid}: {m.events(wid)}"
    return found[-1]["attributes"]


def child(**fields: Any) -> dict[str, Any]:
    return {"type": START, "workflow_type": "C", **fields}


def test_child_starts_completes_and_its_result_reaches_the_parent(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    res = complete(m, "p", child(input={"n": 1}), {"type": "RecordMarker", "marker_name": "after"})
    assert res["ok"], res
    # Command events first, then the outcome, then the task that carries it.
    assert m.events("p")[3:] == ["WORKFLOW_TASK_COMPLETED", "START_CHILD_WORKFLOW_EXECUTION_INITIATED",
                                 "MARKER_RECORDED", "CHILD_WORKFLOW_EXECUTION_STARTED", "WORKFLOW_TASK_SCHEDULED"]
    initiated = last(m, "p", "START_CHILD_WORKFLOW_EXECUTION_INITIATED")
    assert initiated["workflowId"] == "p-child-5"  # <parent id>-child-<event id>
    assert initiated["parentClosePolicy"] == "TERMINATE" and initiated["taskQueue"] == {"name": "q"}
    started = last(m, "p", "CHILD_WORKFLOW_EXECUTION_STARTED")
    kid = m.run("p-child-5")
    assert started["workflowExecution"] == {"workflowId": "p-child-5", "runId": kid["runId"]}
    assert started["initiatedEventId"] == 5
    assert kid["status"] == "RUNNING" and kid["input"] == {"n": 1} and kid["taskQueue"] == "q"
    first = history(m, "p-child-5")[0]["attributes"]
    assert first["parentWorkflowExecution"] == {"workflowId": "p", "runId": m.run("p")["runId"]}
    assert first["parentInitiatedEventId"] == 5

    assert complete(m, "p")["ok"]  # the parent saw CHILD_WORKFLOW_EXECUTION_STARTED and waits
    assert m.run("p")["wt"] is None
    assert complete(m, "p-child-5", {"type": "CompleteWorkflowExecution", "result": "forty-two"})["ok"]
    done = last(m, "p", "CHILD_WORKFLOW_EXECUTION_COMPLETED")
    assert done["result"] == "forty-two" and done["initiatedEventId"] == 5
    assert done["startedEventId"] == 7 and done["workflowType"] == {"name": "C"}
    assert m.events("p")[-2:] == ["CHILD_WORKFLOW_EXECUTION_COMPLETED", "WORKFLOW_TASK_SCHEDULED"]
    assert m.run("p").get("children") == {}


def test_child_close_during_the_parents_leased_task_waits_for_its_completion(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    complete(m, "p", child(workflow_id="k"))
    m.lease("p")  # the task carrying CHILD_WORKFLOW_EXECUTION_STARTED is in flight
    m.do("wf.terminate", workflowId="k", reason="ops")
    assert m.events("p")[-1] == "CHILD_WORKFLOW_EXECUTION_TERMINATED"
    assert last(m, "p", "CHILD_WORKFLOW_EXECUTION_TERMINATED")["reason"] == "ops"
    m.do("wt.complete", **m.token("p"), commands=[])
    assert m.events("p")[-2:] == ["WORKFLOW_TASK_COMPLETED", "WORKFLOW_TASK_SCHEDULED"]


def test_each_kind_of_child_close_is_reported(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    complete(m, "p", child(workflow_id="fails"), child(workflow_id="times-out", workflow_run_timeout_ms=5000),
             child(workflow_id="cancels"))
    complete(m, "p")
    complete(m, "fails", {"type": "FailWorkflowExecution", "failure": {"message": "boom", "type": "E"}})
    failed = last(m, "p", "CHILD_WORKFLOW_EXECUTION_FAILED")
    assert failed["failure"]["message"] == "boom" and failed["retryState"] == "RETRY_POLICY_NOT_SET"

    kid = m.run("times-out")
    m.now = kid["timers"]["run"]
    m.do("wf.deadline", workflowId="times-out", runId=kid["runId"], kind="run", at=kid["timers"]["run"])
    timed = last(m, "p", "CHILD_WORKFLOW_EXECUTION_TIMED_OUT")
    assert timed["timeoutType"] == "RUN" and timed["retryState"] == "RETRY_POLICY_NOT_SET"

    m.do("wf.cancel", workflowId="cancels", reason="no")  # no task ever started: canceled at once
    assert last(m, "p", "CHILD_WORKFLOW_EXECUTION_CANCELED")["reason"] == "no"
    closes = [e for e in m.events("p") if e.startswith("CHILD_WORKFLOW_EXECUTION_")
              and e != "CHILD_WORKFLOW_EXECUTION_STARTED"]
    assert closes == ["CHILD_WORKFLOW_EXECUTION_FAILED", "CHILD_WORKFLOW_EXECUTION_TIMED_OUT",
                      "CHILD_WORKFLOW_EXECUTION_CANCELED"]
    assert m.run("p")["children"] == {}


def test_id_conflicts(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    m.do("wf.start", start={"type": "X", "workflowId": "taken", "taskQueue": "q"})
    taken = m.run("taken")["runId"]
    complete(m, "p", child(workflow_id="taken"), child(workflow_id="p", id_conflict_policy="TERMINATE_EXISTING"))
    failures = [e["attributes"] for e in history(m, "p") if e["eventType"] == "START_CHILD_WORKFLOW_EXECUTION_FAILED"]
    assert [(f["workflowId"], f["cause"]) for f in failures] == [("taken", "WORKFLOW_ALREADY_EXISTS"),
                                                                 ("p", "WORKFLOW_ALREADY_EXISTS")]
    assert failures[0]["runId"] == taken
    assert m.run("p")["status"] == "RUNNING", "a child start never terminates its own parent"
    complete(m, "p", child(workflow_id="taken", id_conflict_policy="TERMINATE_EXISTING"))
    assert _run(m, "taken", taken)["status"] == "TERMINATED"
    assert m.run("taken")["runId"] != taken and m.run("taken")["parent"]["workflowId"] == "p"


def test_a_grandchild_cannot_terminate_its_ancestor(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    complete(m, "p", child(workflow_id="k"))
    res = complete(m, "k", child(workflow_id="p", id_conflict_policy="TERMINATE_EXISTING"))
    assert res["ok"]
    assert last(m, "k", "START_CHILD_WORKFLOW_EXECUTION_FAILED")["cause"] == "WORKFLOW_ALREADY_EXISTS"
    assert m.run("p")["status"] == "RUNNING" and m.run("k")["status"] == "RUNNING"


def test_parent_close_policies(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    complete(m, "p", child(workflow_id="t"), child(workflow_id="a", parent_close_policy="ABANDON"),
             child(workflow_id="rc", parent_close_policy="REQUEST_CANCEL"),
             child(workflow_id="rc-started", parent_close_policy="REQUEST_CANCEL"))
    m.lease("rc-started")  # a task of it started: the cancel needs its acknowledgement
    parent_len = m.run("p")["historyLength"]
    m.do("wf.terminate", workflowId="p", reason="stop")
    assert m.run("t")["status"] == "TERMINATED"
    assert last(m, "t", "WORKFLOW_EXECUTION_TERMINATED") == {"reason": "by parent close policy", "identity": "engine"}
    assert m.run("a")["status"] == "RUNNING"
    assert m.run("rc")["status"] == "CANCELED"
    rs = m.run("rc-started")
    assert rs["status"] == "CANCELING" and rs["timers"]["cancel"] == m.now + 60_000
    assert m.run("p")["historyLength"] == parent_len + 1, "a closed parent hears nothing from its children"
    assert "children" not in m.run("p")
    # The abandoned child's own close is not reported to its closed parent either.
    complete(m, "a", {"type": "CompleteWorkflowExecution"})
    assert m.run("p")["historyLength"] == parent_len + 1


def test_policy_cascades_to_grandchildren(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    complete(m, "p", child(workflow_id="k"))
    complete(m, "k", child(workflow_id="g"))
    m.do("wf.terminate", workflowId="p")
    assert [m.run(w)["status"] for w in ("p", "k", "g")] == ["TERMINATED"] * 3


def test_children_started_by_a_closing_list_meet_its_policy(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    res = complete(m, "p", child(workflow_id="t"), child(workflow_id="a", parent_close_policy="ABANDON"),
                   {"type": "CompleteWorkflowExecution", "result": 1})
    assert res["ok"]
    assert m.events("p")[-5:] == ["START_CHILD_WORKFLOW_EXECUTION_INITIATED",
                                  "START_CHILD_WORKFLOW_EXECUTION_INITIATED",
                                  "CHILD_WORKFLOW_EXECUTION_STARTED", "CHILD_WORKFLOW_EXECUTION_STARTED",
                                  "WORKFLOW_EXECUTION_COMPLETED"]
    assert m.run("t")["status"] == "TERMINATED" and m.run("a")["status"] == "RUNNING"
    assert m.run("p")["wt"] is None


def test_parent_retry_lets_the_failed_attempts_children_go(tmp_path: Path) -> None:
    m = M(tmp_path)
    rp = {"initialInterval": 1000, "backoffCoefficient": 2.0, "maximumInterval": 10_000,
          "maximumAttempts": 3, "nonRetryableErrorTypes": []}
    start(m, "p", retryPolicy=rp)
    complete(m, "p", child(workflow_id="k"), child(workflow_id="kept", parent_close_policy="ABANDON"))
    complete(m, "p", {"type": "FailWorkflowExecution", "failure": {"message": "x"}})
    p = m.run("p")
    assert p["status"] == "RUNNING" and p["attempt"] == 2 and "children" not in p
    assert m.run("k")["status"] == "TERMINATED"
    assert "CHILD_WORKFLOW_EXECUTION_TERMINATED" not in m.events("p")
    complete(m, "kept", {"type": "CompleteWorkflowExecution"})
    assert "CHILD_WORKFLOW_EXECUTION_COMPLETED" not in m.events("p")


def test_child_continue_as_new_keeps_the_parent_waiting_for_the_last_run(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    complete(m, "p", child(workflow_id="k"))
    complete(m, "p")
    first = m.run("k")["runId"]
    complete(m, "k", {"type": "ContinueAsNew", "input": 2})
    assert "CHILD_WORKFLOW_EXECUTION_COMPLETED" not in m.events("p") and m.run("p")["wt"] is None
    second = m.run("k")
    assert second["runId"] != first and second["parent"]["workflowId"] == "p"
    complete(m, "k", {"type": "CompleteWorkflowExecution", "result": "end"})
    done = last(m, "p", "CHILD_WORKFLOW_EXECUTION_COMPLETED")
    assert done["result"] == "end" and done["workflowExecution"]["runId"] == second["runId"]


def test_signal_external(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    m.do("wf.start", start={"type": "X", "workflowId": "other", "taskQueue": "q"})
    complete(m, "other")  # idle, no task pending
    complete(m, "p", child(workflow_id="k"),
             {"type": SIGNAL, "workflow_id": "other", "signal_name": "hi", "input": 7},
             {"type": SIGNAL, "workflow_id": "nobody", "signal_name": "hi"},
             {"type": SIGNAL, "workflow_id": "other", "signal_name": "hi", "child_workflow_only": True},
             {"type": SIGNAL, "workflow_id": "k", "signal_name": "hi", "child_workflow_only": True},
             {"type": SIGNAL, "workflow_id": "p", "signal_name": "self"})
    evs = history(m, "p")
    outcomes = [(e["eventType"], e["attributes"].get("cause")) for e in evs
                if e["eventType"] in ("EXTERNAL_WORKFLOW_EXECUTION_SIGNALED",
                                      "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED")]
    assert outcomes == [("EXTERNAL_WORKFLOW_EXECUTION_SIGNALED", None),
                        ("SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED", "EXTERNAL_WORKFLOW_EXECUTION_NOT_FOUND"),
                        ("SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED", "EXTERNAL_WORKFLOW_EXECUTION_NOT_A_CHILD"),
                        ("EXTERNAL_WORKFLOW_EXECUTION_SIGNALED", None),
                        ("EXTERNAL_WORKFLOW_EXECUTION_SIGNALED", None)]
    got = last(m, "other", "WORKFLOW_EXECUTION_SIGNALED")
    assert got["signalName"] == "hi" and got["input"] == 7 and got["identity"] == "w1"
    assert got["externalWorkflowExecution"]["workflowId"] == "p"
    assert m.events("other")[-1] == "WORKFLOW_TASK_SCHEDULED"
    assert "WORKFLOW_EXECUTION_SIGNALED" in m.events("k")
    # The parent's own signal and the outcomes make one task, after the whole list.
    assert m.events("p").count("WORKFLOW_TASK_SCHEDULED") == 2 and m.events("p")[-1] == "WORKFLOW_TASK_SCHEDULED"
    m.do("wf.terminate", workflowId="other")
    complete(m, "p", {"type": SIGNAL, "workflow_id": "other", "signal_name": "late"})
    assert last(m, "p", "SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_FAILED")["cause"] == "EXTERNAL_WORKFLOW_EXECUTION_NOT_FOUND"


def test_cancel_a_child_through_request_cancel_external(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    complete(m, "p", child(workflow_id="k"))
    complete(m, "p")
    complete(m, "k")  # the child ran a task: its cancel needs an acknowledgement
    kid = m.run("k")
    m.do("wf.signal", workflowId="p", name="wake")  # the parent's next task
    complete(m, "p", {"type": CANCEL, "workflow_id": "k", "run_id": kid["runId"], "child_workflow_only": True,
                      "reason": "enough"})
    assert last(m, "p", "EXTERNAL_WORKFLOW_EXECUTION_CANCEL_REQUESTED")["workflowExecution"]["runId"] == kid["runId"]
    assert m.run("k")["status"] == "CANCELING"
    assert last(m, "k", "WORKFLOW_EXECUTION_CANCEL_REQUESTED") == {"reason": "enough", "identity": "w1"}
    assert m.run("k")["timers"]["cancel"] == m.now + 60_000
    complete(m, "p")
    complete(m, "k", {"type": "CancelWorkflowExecution", "details": "bye"})
    canceled = last(m, "p", "CHILD_WORKFLOW_EXECUTION_CANCELED")
    assert canceled["details"] == "bye"
    complete(m, "p", {"type": CANCEL, "workflow_id": "k"})
    assert (last(m, "p", "REQUEST_CANCEL_EXTERNAL_WORKFLOW_EXECUTION_FAILED")["cause"]
            == "EXTERNAL_WORKFLOW_EXECUTION_NOT_FOUND")


def test_a_run_may_request_its_own_cancel(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    assert complete(m, "p", {"type": CANCEL, "workflow_id": "p"})["ok"]
    assert m.run("p")["status"] == "CANCELING"
    assert m.events("p")[-3:] == ["WORKFLOW_EXECUTION_CANCEL_REQUESTED",
                                  "EXTERNAL_WORKFLOW_EXECUTION_CANCEL_REQUESTED", "WORKFLOW_TASK_SCHEDULED"]


def test_malformed_child_commands_fail_the_task(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    for i, bad in enumerate([{"type": START}, child(parent_close_policy="NEVER"), child(id_conflict_policy="USE_EXISTING"),
                             {"type": SIGNAL, "workflow_id": "x"}, {"type": CANCEL, "workflow_id": ""},
                             {"type": CANCEL, "workflow_id": "x", "child_workflow_only": "yes"}]):
        res = complete(m, "p", {"type": "RecordMarker", "marker_name": "m"}, bad)
        assert res["code"] == "invalid_argument" and res["details"] == {"command_index": 1}, (i, res)
        assert m.events("p")[-2:] == ["WORKFLOW_TASK_FAILED", "WORKFLOW_TASK_SCHEDULED"]
    assert "START_CHILD_WORKFLOW_EXECUTION_INITIATED" not in m.events("p")


def test_history_renders_the_new_events(tmp_path: Path) -> None:
    m = M(tmp_path)
    start(m, "p")
    rp = {"initialInterval": 1000, "backoffCoefficient": 2.0, "maximumInterval": 10_000,
          "maximumAttempts": 3, "nonRetryableErrorTypes": []}
    complete(m, "p", child(workflow_id="k", workflow_run_timeout_ms=90_000, workflow_task_timeout_ms=5000,
                           retry_policy=rp, memo={"a": 1}))
    complete(m, "p")
    complete(m, "k", {"type": "FailWorkflowExecution", "failure": {"message": "no", "non_retryable": True}})
    shown = {e["eventType"]: e for e in map(render.event, history(m, "p"))}
    init = shown["START_CHILD_WORKFLOW_EXECUTION_INITIATED"]["attributes"]
    assert init["workflowRunTimeout"] == "1m30s" and init["workflowTaskTimeout"] == "5s"
    assert init["retryPolicy"]["initialInterval"] == "1s" and init["memo"] == {"a": 1}
    assert shown["CHILD_WORKFLOW_EXECUTION_STARTED"]["eventTime"].endswith("Z")
    failed = shown["CHILD_WORKFLOW_EXECUTION_FAILED"]["attributes"]
    assert failed["failure"]["nonRetryable"] is True and failed["retryState"] == "NON_RETRYABLE_FAILURE"
    assert failed["workflowExecution"]["workflowId"] == "k"
